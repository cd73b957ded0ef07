import pyarrow as pa

from sftflow.tasks.core.artifacts import MANIFEST, ArtifactStore


def _write(store, key="k1", rows=3):
    writer = store.writer("dedup", key)
    writer.write_table("records-00000.parquet", pa.table({"x": list(range(rows))}))
    return writer.commit(inputs=["in1"], config_hash="c", code_hash="h", n_in=rows, n_out=rows, stats={})


def test_manifest_is_written_last_and_folder_appears_atomically(tmp_path):
    store = ArtifactStore(tmp_path)
    writer = store.writer("dedup", "k1")
    writer.write_table("records-00000.parquet", pa.table({"x": [1]}))
    assert store.load("dedup", "k1") is None  # nothing visible before commit
    assert not (tmp_path / "dedup" / "k1").exists()
    writer.commit(inputs=[], config_hash="c", code_hash="h", n_in=1, n_out=1, stats={})
    manifest = store.load("dedup", "k1")
    assert manifest is not None and manifest.files[0].n_rows == 1
    assert (tmp_path / "dedup" / "k1" / MANIFEST).is_file()


def test_folder_without_manifest_does_not_exist(tmp_path):
    store = ArtifactStore(tmp_path)
    _write(store)
    (tmp_path / "dedup" / "k1" / MANIFEST).unlink()
    assert store.load("dedup", "k1") is None


def test_tampered_file_fails_hash_check(tmp_path):
    store = ArtifactStore(tmp_path)
    manifest = _write(store)
    path = manifest.file("records-00000.parquet")
    path.write_bytes(path.read_bytes() + b"x")
    assert store.load("dedup", "k1") is None


def test_content_hash_depends_on_bytes_not_key(tmp_path):
    store = ArtifactStore(tmp_path)
    a = _write(store, "a", rows=3)
    b = _write(store, "b", rows=3)
    c = _write(store, "c", rows=4)
    assert a.content_hash == b.content_hash != c.content_hash


def test_aborted_writer_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    writer = store.writer("dedup", "k1")
    writer.write_table("records-00000.parquet", pa.table({"x": [1]}))
    writer.abort()
    assert list((tmp_path / "dedup").iterdir()) == []
