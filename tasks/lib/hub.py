"""Hugging Face `datasets` sources: hub dataset ids, and folders written by datasets.save_to_disk.

A hub id must name a hub dataset: local data goes through `path`, which is confined to the
project and SFTFLOW_DATA_DIRS, so check_hub_id refuses ids that load_dataset would read from
local files. Rows are located by their 0-based index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from sftflow.tasks.core.recipe import SourceConfig
from sftflow.tasks.core.workspace import PathNotAllowed, is_hub_id
from sftflow.tasks.lib.readers import iter_indexed_rows
from sftflow.tasks.lib.rows import RawRow, SourceError

USE_PATH = "use `path:` for local data (paths are confined to the project and SFTFLOW_DATA_DIRS)"
# datasets' packaged builders (load_dataset("json") reads the current folder's files); the
# installed library's own list is used when it can be read.
LOCAL_BUILDERS = frozenset({
    "arrow", "audiofolder", "csv", "imagefolder", "json", "pandas", "parquet", "pdffolder", "sql",
    "text", "videofolder", "webdataset", "xml",
})


def _local_builders() -> frozenset[str]:
    try:
        from datasets.packaged_modules import _PACKAGED_DATASETS_MODULES
    except ImportError:  # a datasets version that moved it: the fixed list still applies
        return LOCAL_BUILDERS
    return LOCAL_BUILDERS | {name.lower() for name in _PACKAGED_DATASETS_MODULES}


def check_hub_id(hf_dataset: str) -> None:
    """Refuse an `hf_dataset` that is not a hub id (`name` or `org/name`), so load_dataset never
    reads local files: that would escape path confinement and key the cache on a name, not bytes.

    >>> check_hub_id("tatsu-lab/alpaca")
    >>> check_hub_id("../data")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    sftflow.tasks.core.workspace.PathNotAllowed: hf_dataset '../data' looks like a local path, ...; use `path:` for local data ...
    """
    if "\x00" in hf_dataset:
        raise PathNotAllowed(f"hf_dataset {hf_dataset!r} contains a NUL byte; {USE_PATH}")
    if hf_dataset.startswith(("/", ".", "~")) or ".." in hf_dataset or "\\" in hf_dataset:
        raise PathNotAllowed(f"hf_dataset {hf_dataset!r} looks like a local path, not a hub dataset id; {USE_PATH}")
    if hf_dataset.lower() in _local_builders():
        raise PathNotAllowed(
            f"hf_dataset {hf_dataset!r} names a datasets builder that reads local files, not a hub dataset; {USE_PATH}"
        )
    if not is_hub_id(hf_dataset):
        raise PathNotAllowed(
            f"hf_dataset {hf_dataset!r} is not a hub dataset id (`name` or `org/name`: letters, digits, "
            f"'-', '_', '.'); {USE_PATH}"
        )
    if Path(hf_dataset).exists():  # load_dataset would read it from the current folder
        raise PathNotAllowed(
            f"hf_dataset {hf_dataset!r} names a local file or folder ({Path(hf_dataset).resolve()}); {USE_PATH}"
        )


def source_hub_id(source: SourceConfig) -> str:
    """The source's `hf_dataset`, refused (PathNotAllowed naming the source) unless it is a hub id."""
    if source.hf_dataset is None:
        raise SourceError(f"source {source.name!r}: no resolved path given and no `hf_dataset` set")
    try:
        check_hub_id(source.hf_dataset)
    except PathNotAllowed as exc:
        raise PathNotAllowed(f"source {source.name!r}: {exc}") from None
    return source.hf_dataset


def hub_dataset_rows(source: SourceConfig, where: str) -> Iterator[RawRow]:
    """The rows of the source's hub dataset split; a load that fails raises SourceError starting with `where`."""
    import datasets

    hub_id = source_hub_id(source)
    try:
        dataset = datasets.load_dataset(hub_id, split=source.hf_split, revision=source.hf_revision)
    except Exception as exc:  # network, auth, missing split, offline mode: all end the source
        raise SourceError(
            f"{where}: could not load the hub dataset ({type(exc).__name__}: {exc}); check `hf_dataset`, "
            "`hf_split` and `hf_revision`, or save it locally with save_to_disk and use `path`"
        ) from None
    return iter_indexed_rows(dataset)


def saved_dataset_rows(source: SourceConfig, path: Path, where: str) -> Iterator[RawRow]:
    """The rows of a folder written by datasets.save_to_disk (of a DatasetDict: the source's `hf_split`)."""
    import datasets  # heavy import: only for sources that need it

    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # FileNotFoundError and friends for a folder that is not a saved dataset
        raise SourceError(
            f"{where}: not a dataset folder written by datasets.save_to_disk ({exc}); "
            "point `path` at such a folder or at a .jsonl/.json/.parquet file"
        ) from None
    if isinstance(loaded, datasets.DatasetDict):
        if source.hf_split not in loaded:
            raise SourceError(
                f"{where}: the dataset has no split {source.hf_split!r} (it has: "
                f"{', '.join(sorted(loaded))}); set `hf_split` in the recipe"
            )
        loaded = loaded[source.hf_split]
    return iter_indexed_rows(loaded)
