"""`sftflow gc`: memo folders no committed artifact names go, with temporary files; the rest stays."""

from __future__ import annotations

import pyarrow as pa
from typer.testing import CliRunner

from sftflow.flows.cli import app
from sftflow.tasks.core.artifacts import ArtifactStore
from sftflow.tasks.core.memo_gc import prune_memos, referenced_fingerprints
from sftflow.tasks.core.row_memo import TMP_PREFIX, RowMemo


def warehouse_with_memos(tmp_path):
    warehouse = tmp_path / "wh"
    store = ArtifactStore(warehouse / "artifacts")
    for stage, key, fingerprint in [("score", "k1", "used"), ("filter", "k2", "kept"), ("mix", "k3", None)]:
        writer = store.writer(stage, key)
        writer.write_table("records-00000.parquet", pa.table({"x": [1]}))
        writer.commit(inputs=[], config_hash="c", code_hash="c", n_in=1, n_out=1,
                      stats={"memo_fingerprint": fingerprint} if fingerprint else {})
    for stage, fingerprint in [("score", "used"), ("score", "orphan"), ("filter", "kept"), ("filter", "used")]:
        RowMemo(warehouse, stage, fingerprint).add(pa.table({"row_hash": ["a"], "v": [1.0]}))
    (warehouse / "memo" / "score" / "used" / f"{TMP_PREFIX}cut.parquet").write_bytes(b"PAR1")
    return warehouse


def test_gc_keeps_what_artifacts_name_and_prunes_the_rest(tmp_path):
    warehouse = warehouse_with_memos(tmp_path)
    assert referenced_fingerprints(warehouse / "artifacts") == {"score": {"used"}, "filter": {"kept"}}
    dry = prune_memos(warehouse, dry_run=True)
    assert sorted(str(p.relative_to(warehouse)) for p in dry.folders) == ["memo/filter/used", "memo/score/orphan"]
    assert (warehouse / "memo" / "score" / "orphan").is_dir()  # a dry run removes nothing
    pruned = prune_memos(warehouse)
    assert [p.name for p in pruned.temporary_files] == [f"{TMP_PREFIX}cut.parquet"]
    assert sorted(p.name for p in (warehouse / "memo" / "score").iterdir()) == ["used"]
    assert sorted(p.name for p in (warehouse / "memo" / "filter").iterdir()) == ["kept"]
    assert RowMemo(warehouse, "score", "used").lookup(["a"]).num_rows == 1
    assert not list((warehouse / "memo").rglob(f"{TMP_PREFIX}*"))


def test_gc_command(tmp_path):
    warehouse = warehouse_with_memos(tmp_path)
    result = CliRunner().invoke(app, ["gc", "--dry-run", "--warehouse", str(warehouse)])
    assert result.exit_code == 0, result.output
    assert "would remove 2 memo folders and 1 temporary files" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["gc", "--warehouse", str(warehouse)])
    assert result.exit_code == 0 and not (warehouse / "memo" / "score" / "orphan").exists()
