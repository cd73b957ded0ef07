"""Where things live: the project root (recipes' relative paths), the warehouse, allowed roots.

Input paths from recipes are confined to the allowed roots (the project root plus any folders
listed in SFTFLOW_DATA_DIRS, separated by os.pathsep): a recipe can never make the pipeline read
an arbitrary file of the machine.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable


# A hub repository id, `name` or `org/name`: what a recipe may give instead of a confined path.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?")


def is_hub_id(name: str) -> bool:
    """Shaped like a hub id (and nothing a path could hide behind).

    >>> is_hub_id("org/name"), is_hub_id("a/b/c"), is_hub_id("models/../x"), is_hub_id("/abs")
    (True, False, False, False)
    """
    return HUB_ID.fullmatch(name) is not None and ".." not in name


def model_location(model: str, resolve: Callable[[str], Path], field: str) -> Path | str:
    """A local folder (resolved and confined by `resolve`) or a hub id, as the recipe's `field` means it.

    Only a value shaped like a hub id ("name" or "org/name", no "..") may be a hub id, and only
    when no such folder exists under the allowed roots; anything else is a local path and goes
    through `resolve`, whose refusal (outside the allowed roots) is final.
    """
    path = resolve(model)
    if is_hub_id(model):
        return path if path.exists() else model
    if not path.exists():
        raise FileNotFoundError(
            f"{field} {model!r}: local folder {path} does not exist; write the model there "
            "with save_pretrained or give a hub id"
        )
    return path


class PathNotAllowed(ValueError):
    """A recipe path that resolves outside every allowed root."""


@dataclass(frozen=True)
class Workspace:
    root: Path  # project root: recipes' relative source paths start here
    warehouse: Path  # catalog.duckdb and artifacts/<stage>/<key>/
    data_dirs: tuple[Path, ...] = field(default_factory=tuple)  # extra allowed input roots

    @classmethod
    def from_env(cls, root: str | Path | None = None, warehouse: str | Path | None = None) -> "Workspace":
        root_path = Path(root or os.environ.get("SFTFLOW_ROOT") or Path.cwd()).resolve()
        warehouse_path = Path(
            warehouse or os.environ.get("SFTFLOW_WAREHOUSE") or root_path / "data" / "warehouse"
        ).resolve()
        extra = os.environ.get("SFTFLOW_DATA_DIRS", "")
        data_dirs = tuple(Path(p).resolve() for p in extra.split(os.pathsep) if p.strip())
        return cls(root=root_path, warehouse=warehouse_path, data_dirs=data_dirs)

    @property
    def catalog_path(self) -> Path:
        return self.warehouse / "catalog.duckdb"

    @property
    def artifacts_dir(self) -> Path:
        return self.warehouse / "artifacts"

    @property
    def allowed_roots(self) -> tuple[Path, ...]:
        return (self.root, *self.data_dirs)

    def resolve_input(self, raw: str) -> Path:
        """Resolve a recipe path (relative to root) and refuse anything outside the allowed roots."""
        if "\x00" in raw:
            raise PathNotAllowed(f"path {raw!r} contains a NUL byte")
        if raw.startswith("~"):
            raise PathNotAllowed(f"path {raw!r}: '~' is not expanded; give a path under the project root")
        candidate = Path(raw)
        if not candidate.is_absolute():
            candidate = self.root / candidate
        resolved = candidate.resolve()  # follows symlinks: a link leaving the roots is refused
        for allowed in self.allowed_roots:
            if resolved == allowed or allowed in resolved.parents:
                return resolved
        roots = ", ".join(str(r) for r in self.allowed_roots)
        raise PathNotAllowed(
            f"path {raw!r} resolves to {resolved}, outside the allowed roots ({roots}); "
            "move the data under the project or add its folder to SFTFLOW_DATA_DIRS"
        )
