"""Train stage: its key, and one real run (mix artifact -> accelerate launch --cpu -> committed
train artifact) whose round-trip check passes and fails when the saved template is altered."""

from __future__ import annotations

import contextlib
import io
import json
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from sftflow.tasks.core.recipe_data import MixConfig
from sftflow.tasks.core.recipe_training import TinyModelConfig, TrainConfig
from sftflow.tasks.core.records import RECORD_SCHEMA
from sftflow.tasks.core.stage import StageCall, execute
from tests.stage_helpers import mix_records
from sftflow.tasks.lib.train_checks import RoundTripError, require_roundtrip, roundtrip_check
from sftflow.tasks.lib.train_launch import ECHOED_PREFIX
from sftflow.tasks.train import train_stage


ROOT = Path(__file__).resolve().parents[2]
TINY = TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       vocab_size=400, max_position_embeddings=128)


def test_the_accelerate_config_bytes_enter_the_train_key(tmp_path):
    from sftflow.tasks.train import plan as plan_train
    from sftflow.tasks.core.artifacts import Manifest
    from sftflow.tasks.core.recipe import Recipe
    from sftflow.tasks.core.workspace import Workspace

    ws = Workspace.from_env(root=tmp_path, warehouse=tmp_path / "wh")
    (tmp_path / "multi.yaml").write_text("num_processes: 8\nnum_machines: 2\n")
    mixed = Manifest(stage="mix", key="m", path=str(tmp_path), files=[], inputs=[], config_hash="c", code_hash="h",
                     n_in=1, n_out=1, stats={}, created_at="2026-01-01T00:00:00+00:00")

    def key(extra: dict) -> str:
        recipe = Recipe.model_validate({"name": "r", "sources": [{"name": "s", "path": "a.jsonl", "format": "openai"}],
                                        "train": extra})
        return plan_train(recipe, mixed, ws, {}).key

    with_file = key({"accelerate_config": "multi.yaml"})
    assert with_file != key({})
    (tmp_path / "multi.yaml").write_text("num_processes: 16\nnum_machines: 2\n")
    assert key({"accelerate_config": "multi.yaml"}) != with_file


# ------------------------------------------------------------------------------ a real run --
def conversation_records(n: int) -> pa.Table:
    rows = []
    for i in range(n):
        messages = [{"role": "user", "content": f"What is {i} plus {i + 1}?"},
                    {"role": "assistant", "content": f"{i} plus {i + 1} is {2 * i + 1}."}]
        if i % 5 == 0:  # some multi-turn rows with a system prompt
            messages = [{"role": "system", "content": "You answer briefly."}, *messages,
                        {"role": "user", "content": "And doubled?"},
                        {"role": "assistant", "content": f"Doubled it is {4 * i + 2}."}]
        rows.append({"example_id": f"ex-{i:03d}", "content_hash": f"h{i}", "source": "arith",
                     "source_format": "openai", "source_uri": "mem://arith", "source_row": i,
                     "category": "math" if i % 2 else "qa", "messages": messages})
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One real train stage run on a real mix artifact; returns (manifest, call, captured stdout)."""
    root = tmp_path_factory.mktemp("train-stage")
    warehouse = root / "warehouse"
    mix_cfg = MixConfig(eval_fraction=0.2, seed=0)
    mix_call = StageCall(stage="mix", key="mixkey", code_hash="c", config=mix_cfg.canonical(), config_hash="h",
                         root=str(root), warehouse=str(warehouse))
    mix_manifest, _ = execute(mix_call, lambda c: mix_records(conversation_records(30), mix_cfg))
    train_cfg = TrainConfig(max_length=64, max_steps=3, per_device_train_batch_size=2, logging_steps=1,
                            save_steps=2, learning_rate=1e-3, packing=True, tiny=TINY)
    data_card = {"recipe": {"name": "unit", "hash": "abc"},
                 "mixture": mix_manifest.stats["mixture"],
                 "artifacts": [{"stage": "mix", "key": mix_manifest.key, "sha256": mix_manifest.content_hash}]}
    call = StageCall(stage="train", key="trainkey", code_hash="c", config=train_cfg.canonical(), config_hash="h",
                     inputs=[mix_manifest], params={"data_card": data_card}, root=str(ROOT),
                     warehouse=str(warehouse))
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):  # what the Prefect logger would relay (not a terminal)
        manifest, hit = execute(call, lambda c: train_stage.compute(c))
    assert not hit
    return manifest, call, stdout.getvalue()


@pytest.fixture(scope="module")
def trained(trained_run):
    """(manifest, call) of the real run."""
    return trained_run[:2]


STEP_LINE = re.compile(r"^\[train\] step (\d+)/3 loss \d+\.\d{3} grad_norm \d+\.\d{2} lr \d\.\de[-+]\d{2} "
                       r"tokens/s \d+ conversations/step \d+\.\d tokens/step \d+$")


def test_stage_echoes_one_line_per_logging_step_and_keeps_the_rest_in_train_log(trained_run):
    manifest, _, stdout = trained_run
    lines = stdout.splitlines()
    for noise in ("it/s", "%|", "Map", "Filter", "Tokenizing", "Packing", "Loading weights", "{'loss'"):
        assert not any(noise in line for line in lines), noise
    steps = [line for line in lines if line.startswith("[train] step ")]
    assert [STEP_LINE.match(line).group(1) for line in steps] == ["1", "2", "3"]  # logging_steps=1, max_steps=3
    log = manifest.file("train.log").read_text()
    assert all(line in log for line in steps)  # train.log holds the whole output, step lines included
    # Whatever else the worker wrote (warnings, when a library emits one) stays in train.log only.
    # Whether anything else is written depends on the libraries, so its amount is not asserted.
    rest = {line for line in log.splitlines() if line.strip() and not line.startswith(ECHOED_PREFIX)}
    assert not rest & set(lines)
    metrics = manifest.stats["train_metrics"]
    assert metrics["mean_conversations_per_step"] > 0 and metrics["mean_tokens_per_step"] > 0


def test_stage_commits_model_reports_and_stats(trained):
    manifest, call = trained
    names = {f.name for f in manifest.files}
    for name in ("model/model.safetensors", "model/config.json", "model/tokenizer.json", "model/chat_template.jinja",
                 "model/generation_config.json", "base_model/model.safetensors", "mask_audit.json",
                 "training_config.yaml", "log_history.json", "metrics.json", "training.png", "roundtrip.json",
                 "MODEL_CARD.md", "chat_template.jinja", "trained_sequences.json", "train.log"):
        assert name in names, name
    assert manifest.file("training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = manifest.stats
    assert stats["model"] == {"base_model": "builtin:tiny-llama", "method": "full", "path": "model",
                              "base_location": None, "revision": None}
    assert stats["device"] == "cpu" and stats["packing"] is True and stats["template_origin"] == "tokenizer"
    assert stats["mask_audit"]["n_zero_supervised"] == 0 and stats["mask_audit"]["end_of_turn_supervised"] is True
    assert stats["train_metrics"]["global_step"] == 3 and stats["roundtrip_ok"] is True
    n_train = sum(s["n_rows"] for s in manifest.stats.get("shards", []) if s["split"] == "train") or stats["n_in"]
    assert stats["n_in"] == n_train == stats["n_out"]  # packing keeps every train row as one sequence
    # the saved template is the one trained with, byte for byte, and eos stops at <|im_end|>
    assert manifest.file("model/chat_template.jinja").read_bytes() == manifest.file("chat_template.jinja").read_bytes()
    generation = json.loads(manifest.file("model/generation_config.json").read_text())
    roundtrip = json.loads(manifest.file("roundtrip.json").read_text())
    assert roundtrip["end_of_turn_token"] == "<|im_end|>"
    assert roundtrip["end_of_turn_token_id"] in generation["eos_token_id"]
    assert roundtrip["n_rows_checked"] >= 20 and roundtrip["n_missing"] == 0
    card = manifest.file("MODEL_CARD.md").read_text()
    assert "demonstration model" in card and "| mix | mixkey |" in card
    # the checkpoints stay in the work folder (the resume point), not in the artifact
    assert not any(n.startswith("checkpoints") for n in names)
    assert any((call.store.root.parent / "work" / "train" / "trainkey" / "checkpoints").glob("checkpoint-*"))


def _editable_model_copy(trained, tmp_path):
    """The trained model folder copied (with its trained sequences) so a test can damage it."""
    from sftflow.tasks.lib.train_worker import TrainJob

    manifest, call = trained
    job = TrainJob.read(call.store.root.parent / "work" / "train" / "trainkey" / "job.json")
    folder = tmp_path / "model"
    shutil.copytree(manifest.file("model"), folder)
    shutil.copy(manifest.file("trained_sequences.json"), folder / "trained_sequences.json")
    return job, folder


def test_roundtrip_fails_when_the_saved_template_is_altered(trained, tmp_path):
    job, folder = _editable_model_copy(trained, tmp_path)
    import pyarrow.parquet as pq

    rows = [r for path in job.train_files for r in pq.read_table(path).to_pylist()]
    rows = [r for r in rows if r["example_id"] in set(job.sample_ids)]
    good = roundtrip_check(folder, rows, job.chat_template, 64, packing=True)
    assert good["ok"] and good["n_rows_checked"] == len(rows) >= 20
    require_roundtrip(good, folder)  # does not raise

    altered = job.chat_template.replace("'<|im_start|>assistant\\n'", "'<|im_start|>assistant:\\n'")
    assert altered != job.chat_template
    (folder / "chat_template.jinja").write_text(altered, encoding="utf-8")
    bad = roundtrip_check(folder, rows, job.chat_template, 64, packing=True)
    assert not bad["ok"] and bad["template_byte_identical"] is False
    assert bad["n_missing"] == len(rows)  # every re-rendered row now differs from what was trained
    assert all(m["worker_sha256_trained"] for m in bad["missing"])  # training itself tokenized them right
    with pytest.raises(RoundTripError, match="not among the trained sequences"):
        require_roundtrip(bad, folder)


def test_roundtrip_fails_when_generation_config_does_not_stop_at_end_of_turn(trained, tmp_path):
    job, folder = _editable_model_copy(trained, tmp_path)
    config = json.loads((folder / "generation_config.json").read_text())
    config["eos_token_id"] = [0]
    (folder / "generation_config.json").write_text(json.dumps(config))
    import pyarrow.parquet as pq

    rows = pq.read_table(job.train_files[0]).to_pylist()[:3]
    report = roundtrip_check(folder, rows, job.chat_template, 64, packing=True)
    assert not report["ok"] and report["n_missing"] == 0
    assert any("lacks the end-of-turn token" in p for p in report["problems"])


def test_mask_audit_failure_stops_before_any_training(tmp_path):
    from sftflow.tasks.lib.mask_audit import MaskAuditError

    rows = []
    for i in range(6):  # prompts far longer than max_length: truncation leaves no assistant token
        prompt = " ".join(f"context{i}-{k}" for k in range(40))
        rows.append({"example_id": f"long-{i}", "content_hash": f"h{i}", "source": "s", "source_format": "openai",
                     "source_uri": "mem://s", "source_row": i, "category": "qa",
                     "messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": "Yes."}]})
    records = pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
    warehouse = tmp_path / "warehouse"
    mix_cfg = MixConfig(eval_fraction=0.0)
    mix_call = StageCall(stage="mix", key="m", code_hash="c", config=mix_cfg.canonical(), config_hash="h",
                         root=str(tmp_path), warehouse=str(warehouse))
    mix_manifest, _ = execute(mix_call, lambda c: mix_records(records, mix_cfg))
    call = StageCall(stage="train", key="t", code_hash="c", config=TrainConfig(max_length=16, tiny=TINY).canonical(),
                     config_hash="h", inputs=[mix_manifest], root=str(ROOT), warehouse=str(warehouse))
    with pytest.raises(MaskAuditError, match="no supervised token after truncation to max_length=16"):
        execute(call, lambda c: train_stage.compute(c))
    work = warehouse / "work" / "train" / "t"
    audit = json.loads((work / "reports" / "mask_audit.json").read_text())
    assert audit["n_zero_supervised"] == 6
    assert not (work / "job.json").exists() and not (work / "checkpoints").exists()
    assert call.store.load("train", "t") is None


def test_lora_stage_saves_an_adapter_that_loads_on_its_base(tmp_path):
    """The train stage with method lora: adapter in the artifact, pointing at the artifact's base."""
    from peft import AutoPeftModelForCausalLM

    warehouse = tmp_path / "warehouse"
    mix_cfg = MixConfig(eval_fraction=0.0, seed=0)
    mix_call = StageCall(stage="mix", key="mixkey", code_hash="c", config=mix_cfg.canonical(), config_hash="h",
                         root=str(tmp_path), warehouse=str(warehouse))
    mix_manifest, _ = execute(mix_call, lambda c: mix_records(conversation_records(12), mix_cfg))
    train_cfg = TrainConfig(method="lora", max_length=64, max_steps=2, per_device_train_batch_size=2,
                            save_steps=2, packing=False, tiny=TINY)
    call = StageCall(stage="train", key="lorakey", code_hash="c", config=train_cfg.canonical(), config_hash="h",
                     inputs=[mix_manifest], params={}, root=str(ROOT), warehouse=str(warehouse))
    manifest, _ = execute(call, lambda c: train_stage.compute(c))
    assert manifest.stats["model"]["method"] == "lora"
    assert manifest.file("model/adapter_model.safetensors").is_file()
    # the adapter folder holds safetensors weights only (no pickle), and the trained template tokens are recorded
    weights = [f.name for f in manifest.files if f.name.startswith("model/")
               and f.name.rsplit(".", 1)[-1] in ("safetensors", "bin", "pt", "pth", "pkl", "ckpt")]
    assert weights == ["model/adapter_model.safetensors"]
    assert sorted(manifest.stats["train_metrics"]["trainable_tokens"]) == ["<|im_end|>", "<|im_start|>"]
    assert json.loads(manifest.file("roundtrip.json").read_text())["ok"] is True
    model = AutoPeftModelForCausalLM.from_pretrained(str(manifest.file("model")))
    assert model.peft_config["default"].r == 16


