"""What a completed run leaves behind holds no pickle: Prefect results are JSON, committed artifacts
hold no pickle-based file, and model weights are safetensors.

The static half of this check (no pickle, eval, unsafe yaml or shell in the source) is
tests/test_security.py. The training work folder (work/train/<key>/checkpoints) is not looked at
here: HF Trainer writes and reads its own resume state there (docs/training.md, "What is pickled
and why"); only what is committed under artifacts/ is a result.
"""

from __future__ import annotations

import json
import struct
import zipfile
from pathlib import Path

import pytest

PICKLE_SUFFIXES = {".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib"}
PICKLE_PROTOCOLS = range(2, 6)  # protocol 2+ streams open with PROTO: 0x80 <protocol>
TRAINER_STATE_FILES = {"optimizer.pt", "scheduler.pt", "rng_state.pth", "training_args.bin", "scaler.pt"}


def is_safetensors(path: Path) -> bool:
    """A safetensors file: an 8-byte little-endian header length, then that many bytes of JSON."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return False
        (length,) = struct.unpack("<Q", head)
        if length > path.stat().st_size - 8:
            return False
        try:
            return isinstance(json.loads(handle.read(length)), dict)
        except ValueError:
            return False


def pickle_format(path: Path) -> str | None:
    """Why `path` is pickle-based (suffix, pickle header, torch zip checkpoint), or None."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        return f"suffix {path.suffix}"
    if is_safetensors(path):  # its header length may start with byte 0x80: not a pickle header
        return None
    with open(path, "rb") as handle:
        head = handle.read(2)
    if len(head) == 2 and head[0] == 0x80 and head[1] in PICKLE_PROTOCOLS:
        return f"pickle protocol {head[1]} header"
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            pickled = [n for n in archive.namelist() if n.endswith(".pkl")]
        if pickled:
            return f"zip holding {pickled[0]} (a torch.save checkpoint)"
    return None


# ---------------------------------------------------------------------------- the detectors --
def test_the_detector_finds_every_kind_of_pickle(tmp_path):
    import pickle  # writes the fixtures; only the project source (flows, tasks, bench) must not

    import torch
    from safetensors.torch import save_file

    (tmp_path / "state.bin").write_bytes(b"{}")
    for protocol in PICKLE_PROTOCOLS:
        (tmp_path / f"p{protocol}").write_bytes(pickle.dumps({"a": 1}, protocol=protocol))
    torch.save({"w": torch.zeros(2)}, tmp_path / "checkpoint")  # a zip with archive/data.pkl
    found = {p.name: pickle_format(p) for p in tmp_path.iterdir()}
    assert found["state.bin"] == "suffix .bin"
    assert all(found[f"p{n}"] == f"pickle protocol {n} header" for n in PICKLE_PROTOCOLS)
    assert found["checkpoint"].startswith("zip holding ") and found["checkpoint"].endswith("data.pkl (a torch.save checkpoint)")

    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    (tmp_path / "parts.zip").write_bytes(b"")
    with zipfile.ZipFile(tmp_path / "parts.zip", "w") as archive:
        archive.writestr("readme.txt", "plain")
    (tmp_path / "report.json").write_text('{"a": 1}')
    for name in ("model.safetensors", "parts.zip", "report.json"):
        assert pickle_format(tmp_path / name) is None, name


def test_a_safetensors_header_length_starting_with_0x80_is_not_a_pickle(tmp_path):
    header = json.dumps({"__metadata__": {"pad": "x" * 1000}}).encode()
    header += b" " * (0x0480 - len(header))  # length 0x0480: the file opens with bytes 80 04
    path = tmp_path / "model.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    assert path.read_bytes()[:2] == b"\x80\x04"
    assert is_safetensors(path) and pickle_format(path) is None
    path.rename(tmp_path / "weights")
    assert pickle_format(tmp_path / "weights") is None


# --------------------------------------------------------------------------------- the run --
@pytest.fixture(scope="module")
def warehouse(completed_run) -> Path:
    root, summary = completed_run
    return root / "data" / "warehouse"


def test_prefect_result_files_are_json_with_the_json_serializer(warehouse):
    files = sorted(p for p in (warehouse / "prefect-results").rglob("*") if p.is_file())
    # one result per stage task of the demo run: ingest+normalize per source, then six more
    assert len(files) >= 8, [p.name for p in files]
    stages = set()
    for path in files:
        try:
            record = json.loads(path.read_bytes())
        except ValueError as exc:
            pytest.fail(f"{path}: a Prefect result file that is not JSON ({exc})")
        serializer = record["metadata"]["serializer"]["type"]
        assert serializer == "json", f"{path}: written with the {serializer!r} serializer"
        result = json.loads(record["result"])  # the task's value itself, as JSON text (not base64 pickle)
        assert set(result) == {"manifest", "computed"}, path
        stages.add(result["manifest"]["stage"])
    assert stages == {"ingest", "normalize", "dedup", "filter", "score", "mix", "train", "evaluate"}


def test_committed_artifacts_hold_no_pickle_based_file(warehouse):
    files = sorted(p for p in (warehouse / "artifacts").rglob("*") if p.is_file())
    stages = {p.relative_to(warehouse / "artifacts").parts[0] for p in files}
    assert {"train", "evaluate", "mix"} <= stages and len(files) > 20
    pickled = [f"{p.relative_to(warehouse)}: {why}" for p in files if (why := pickle_format(p))]
    assert not pickled, "pickle-based files in committed artifacts:\n" + "\n".join(pickled)


def test_model_weights_are_safetensors_and_trainer_state_stays_in_the_work_folder(warehouse):
    (train,) = [p for p in (warehouse / "artifacts" / "train").iterdir() if (p / "manifest.json").is_file()]
    for folder in (train / "model", train / "base_model"):
        names = {p.name for p in folder.iterdir()}
        assert "model.safetensors" in names, f"{folder}: no safetensors weights ({sorted(names)})"
        assert not names & TRAINER_STATE_FILES, f"{folder}: Trainer state {sorted(names & TRAINER_STATE_FILES)}"
    assert not {p.name for p in train.rglob("*")} & TRAINER_STATE_FILES
    # the checkpoints the run resumed from are in the work folder, not committed with the model
    checkpoints = warehouse / "work" / "train" / train.name / "checkpoints"
    if checkpoints.is_dir():  # pruned by a later train run
        assert all(p.suffix not in PICKLE_SUFFIXES or p.name in TRAINER_STATE_FILES
                   for p in checkpoints.rglob("*") if p.is_file())
