"""Train stage: SFT kwargs, attention choice, and one real run (mix artifact -> accelerate launch
--cpu -> committed train artifact) whose round-trip check passes and fails when the saved
template is altered."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
from pathlib import Path

import pyarrow as pa
import pytest

from tasks.core.recipe import MixConfig, TinyModelConfig, TrainConfig
from tasks.core.records import RECORD_SCHEMA
from tasks.core.stage import StageCall, execute
from tests.stage_helpers import mix_records
from tasks.train import (
    RoundTripError,
    attn_implementation,
    launch_command,
    require_roundtrip,
    roundtrip_check,
    sample_rows,
    sft_kwargs,
    train_stage,
    wants_packing,
)


ROOT = Path(__file__).resolve().parents[2]
TINY = TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       vocab_size=400, max_position_embeddings=128)


# ------------------------------------------------------------------------------ sft kwargs --
def test_default_learning_rate_full_vs_lora_and_explicit_wins():
    assert sft_kwargs(TrainConfig(), "cpu", 10.0)["learning_rate"] == 2e-5
    assert sft_kwargs(TrainConfig(method="lora"), "cpu", 10.0)["learning_rate"] == 2e-4
    assert sft_kwargs(TrainConfig(method="lora", learning_rate=1e-3), "cpu", 10.0)["learning_rate"] == 1e-3


def test_auto_packing_packs_only_rows_under_half_of_max_length():
    cfg = TrainConfig(max_length=512)
    packed = sft_kwargs(cfg, "cpu", 255.9)
    assert packed["packing"] is True and packed["packing_strategy"] == "bfd"
    unpacked = sft_kwargs(cfg, "cpu", 256.0)
    assert unpacked["packing"] is False and "packing_strategy" not in unpacked
    assert sft_kwargs(TrainConfig(packing=False), "cpu", 1.0)["packing"] is False
    assert sft_kwargs(TrainConfig(packing=True), "cpu", 10_000.0)["packing"] is True
    assert (wants_packing("auto", 31.0, 64), wants_packing("auto", 32.0, 64)) == (True, False)


def test_cpu_flags_and_steps_versus_epochs():
    cpu = sft_kwargs(TrainConfig(max_steps=3, seed=7), "cpu", 10.0)
    assert cpu["use_cpu"] is True and cpu["bf16"] is False and cpu["dataloader_pin_memory"] is False
    assert cpu["dataloader_num_workers"] == 0 and cpu["activation_checkpointing"] is False
    assert cpu["max_steps"] == 3 and "num_train_epochs" not in cpu
    assert (cpu["seed"], cpu["data_seed"], cpu["save_total_limit"], cpu["report_to"]) == (7, 7, 2, [])
    assert cpu["eval_strategy"] == "no" and "eval_steps" not in cpu
    epochs = sft_kwargs(TrainConfig(num_train_epochs=1.5), "cpu", 10.0)
    assert epochs["num_train_epochs"] == 1.5 and "max_steps" not in epochs
    assert sft_kwargs(TrainConfig(bf16=True), "cpu", 10.0)["bf16"] is True  # explicit bf16 is honoured


def test_cuda_flags_bf16_auto_follows_hardware_and_eval_every_save():
    cfg = TrainConfig(model="org/some-model", save_steps=25)
    gpu = sft_kwargs(cfg, "cuda", 10.0, bf16_supported=True, has_eval=True)
    assert gpu["use_cpu"] is False and gpu["bf16"] is True and gpu["activation_checkpointing"] is True
    assert (gpu["eval_strategy"], gpu["eval_steps"], gpu["save_steps"]) == ("steps", 25, 25)
    assert sft_kwargs(cfg, "cuda", 10.0, bf16_supported=False)["bf16"] is False
    assert sft_kwargs(TrainConfig(), "cuda", 10.0, bf16_supported=True)["activation_checkpointing"] is False


def test_sft_kwargs_are_accepted_by_sft_config(tmp_path):
    from trl import SFTConfig

    kwargs = sft_kwargs(TrainConfig(max_steps=3, warmup_ratio=0.1), "cpu", 10.0, has_eval=True)
    args = SFTConfig(**kwargs, output_dir=str(tmp_path), assistant_only_loss=True)
    assert args.use_cpu and args.packing and args.get_warmup_steps(30) == 3
    assert args.activation_checkpointing is False and args.gradient_checkpointing is False


def test_attention_choice():
    assert attn_implementation(TrainConfig(), "cpu") == "sdpa"
    assert attn_implementation(TrainConfig(attn_implementation="eager"), "cuda") == "eager"
    try:
        import flash_attn  # noqa: F401
        expected = "flash_attention_2"
    except ImportError:
        expected = "sdpa"
    assert attn_implementation(TrainConfig(), "cuda") == expected


def test_launch_command_uses_this_interpreter_and_cpu_flag(tmp_path):
    command = launch_command(tmp_path / "job.json", 2, use_cpu=True)
    assert command[:3] == [os.sys.executable, "-m", "accelerate.commands.launch"]
    assert command[command.index("--num_processes") + 1] == "2" and "--cpu" in command
    assert command[-3:] == ["-m", "tasks.lib.train_worker", str(tmp_path / "job.json")]
    assert "--cpu" not in launch_command(tmp_path / "job.json", 1, use_cpu=False)


def test_an_accelerate_config_file_decides_the_launch(tmp_path):
    # several GPUs or machines: the file's settings, not the single-machine defaults
    command = launch_command(tmp_path / "job.json", 4, use_cpu=False, config_file=tmp_path / "multi.yaml")
    assert command[3:5] == ["--config_file", str(tmp_path / "multi.yaml")]
    assert "--num_machines" not in command and "--num_processes" not in command
    assert command[-3:] == ["-m", "tasks.lib.train_worker", str(tmp_path / "job.json")]


def test_the_accelerate_config_bytes_enter_the_train_key(tmp_path):
    from tasks.train import plan as plan_train
    from tasks.core.artifacts import Manifest
    from tasks.core.recipe import Recipe
    from tasks.core.workspace import Workspace

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


def test_roundtrip_sample_counts_copies_once_and_is_order_independent():
    rows = [{"example_id": f"e{i % 30}", "messages": []} for i in range(90)]
    sample = sample_rows(rows, 32, seed=0, salt="s")
    assert len(sample) == 30 and len({r["example_id"] for r in sample}) == 30
    reversed_sample = sample_rows(list(reversed(rows)), 20, seed=0, salt="s")
    assert [r["example_id"] for r in reversed_sample] == [r["example_id"] for r in sample_rows(rows, 20, 0, "s")]


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
    assert len(log.splitlines()) > len(steps)
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
    from tasks.lib.train_worker import TrainJob

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
    from tasks.lib.mask_audit import MaskAuditError

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


def test_local_model_paths_are_confined_and_hub_ids_pass_through(tmp_path):
    from tasks.core.workspace import PathNotAllowed, Workspace
    from tasks.train import model_location

    (tmp_path / "models" / "mine").mkdir(parents=True)
    workspace = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    assert model_location("models/mine", workspace) == str(tmp_path / "models" / "mine")
    assert model_location("HuggingFaceTB/SmolLM2-135M", workspace) == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(PathNotAllowed, match="outside the allowed roots"):
        model_location("../elsewhere", workspace)
    with pytest.raises(ValueError, match="only builtin model is builtin:tiny-llama"):
        model_location("builtin:gpt", workspace)
    with pytest.raises(FileNotFoundError, match=r"^train\.model './models/missing': local folder"):
        model_location("./models/missing", workspace)  # the error names the recipe field it came from


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


CHILD_OUTPUT = ("import sys\n"
                "print('[train] step 1/2 loss 2.000')\n"
                "print('Map: 100%|##########| 23/23 [00:00<00:00, 3069.13 examples/s]', file=sys.stderr)\n"
                "print('some library warning', file=sys.stderr)\n"
                "print('[train] step 2/2 loss 1.000')\n")


@pytest.mark.parametrize("terminal", [False, True])
def test_run_logged_echoes_step_lines_or_one_bar_and_logs_everything(tmp_path, monkeypatch, capsys, terminal):
    import sys

    from tasks.train import run_logged

    monkeypatch.setattr(sys.stdout, "isatty", lambda: terminal, raising=False)
    run_logged([sys.executable, "-c", CHILD_OUTPUT], tmp_path, tmp_path / "train.log")
    out, err = capsys.readouterr()
    log = (tmp_path / "train.log").read_text()
    assert "Map: 100%" in log and "some library warning" in log and log.count("[train] step") == 2
    assert "Map" not in out + err and "warning" not in out + err
    # the step lines are printed either way (Prefect relays prints to the run's log and the UI)
    assert out.splitlines() == ["[train] step 1/2 loss 2.000", "[train] step 2/2 loss 1.000"]
    if terminal:  # and one tqdm bar (on stderr) under them, moved to 2/2
        assert "2/2" in err and err.count("train:") >= 1
    else:
        assert err == ""
