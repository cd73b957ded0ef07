"""Per-part stage work: the same artifact bytes on every runner, parts in input order."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from sftflow.tasks.core.artifacts import ArtifactStore
from sftflow.tasks.core.parts import sum_counts
from tests.stage_helpers import records_from_rows
from sftflow.tasks.core.stage import StageCall, execute
from sftflow.tasks.normalize import normalize_stage

U, A = "user", "assistant"


@pytest.fixture(scope="module", autouse=True)
def prefect_server():
    """The part tasks are Prefect task runs: give them a temporary API, as the flow tests have."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def row(example_id: str, messages: list[dict]) -> dict:
    return {"example_id": example_id, "source": "s", "source_format": "openai", "source_uri": "s.jsonl",
            "source_row": 0, "category": "auto", "origin": "human", "license": "cc0", "messages": messages}


def three_part_input(tmp_path):
    """An ingest-like artifact whose records come in 3 files, one row of each with a problem."""
    writer = ArtifactStore(tmp_path / "artifacts").writer("ingest", "in")
    for part in range(3):
        rows = [row(f"p{part}-{i}", [{"role": U, "content": f"Question {part} {i}?"},
                                     {"role": A, "content": f"Answer  {i}. "}]) for i in range(20)]
        rows.append(row(f"p{part}-bad", [{"role": A, "content": "no question"}]))
        writer.write_table(f"records-{part:05d}.parquet", records_from_rows(rows))
    return writer.commit(inputs=[], config_hash="c", code_hash="h", n_in=63, n_out=63, stats={})


def normalize_call(tmp_path, ingested, runner: dict) -> StageCall:
    warehouse = tmp_path / runner["kind"]
    return StageCall(stage="normalize", key="norm", code_hash="h", config={}, config_hash="c", inputs=[ingested],
                     params={"runner": runner}, root=str(tmp_path), warehouse=str(warehouse))


def files(manifest) -> list[tuple[str, str]]:
    return [(f.name, f.sha256) for f in manifest.files]


@pytest.mark.parametrize("runner", [{"kind": "processes", "workers": 2},
                                    {"kind": "dask", "workers": 2}], ids=["processes", "dask-localcluster"])
def test_runners_write_the_sequential_artifact_byte_for_byte(tmp_path, runner):
    ingested = three_part_input(tmp_path)
    sequential, _ = execute(normalize_call(tmp_path, ingested, {"kind": "sequential"}), normalize_stage.compute)
    parallel, hit = execute(normalize_call(tmp_path, ingested, runner), normalize_stage.compute)
    assert not hit
    assert files(parallel) == files(sequential)
    assert (parallel.n_in, parallel.n_out) == (63, 60)
    assert parallel.stats == {**sequential.stats, "compute_seconds": parallel.stats["compute_seconds"]}
    assert sum(parallel.stats["reasons"].values()) == 63 and parallel.stats["reasons"]["kept"] == 60
    decisions = pq.read_table(parallel.file("decisions.parquet")).column("example_id").to_pylist()
    assert decisions[:21] == [f"p0-{i}" for i in range(20)] + ["p0-bad"]  # parts in input order
    assert not list((tmp_path / runner["kind"] / "artifacts" / "normalize").glob(".tmp-*"))  # scratch removed


def test_sum_counts_adds_keywise():
    assert sum_counts([{"a": 1}, {"a": 2, "b": 1}, {}]) == {"a": 3, "b": 1}


def test_a_part_read_back_is_the_table_computed(tmp_path):
    # list columns keep Arrow's child name through the scratch file, so the artifact a parted
    # stage writes has the bytes of a direct write of the same table
    from sftflow.tasks.core.parts import compute_part, read_part
    from sftflow.tasks.normalize import normalize_records
    from sftflow.tasks.core.recipe_data import NormalizeConfig

    ingested = three_part_input(tmp_path)
    source = ingested.files_named("records")[0]
    call = normalize_call(tmp_path, ingested, {"kind": "sequential"})
    compute_part("sftflow.tasks.normalize:normalize_part", call.model_dump(mode="json"), str(source), str(tmp_path / "out"))
    back, direct = read_part(tmp_path / "out"), normalize_records(pq.read_table(source), NormalizeConfig())
    for ours, theirs in [(back.records, direct.records), (back.decisions, direct.decisions)]:
        assert ours.schema.field(0) == theirs.schema.field(0) and str(ours.schema) == str(theirs.schema)
        pq.write_table(ours, tmp_path / "a.parquet")
        pq.write_table(theirs, tmp_path / "b.parquet")
        assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
