"""The training process: pure helpers, then real runs of `python -m sftflow.tasks.lib.train_worker JOB.json`
on a tiny Llama (full + BFD packing, resume from a checkpoint, LoRA without packing)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sftflow.tasks.lib.chat_template import CHATML_TEMPLATE
from sftflow.tasks.core.recipe_training import LoraSettings, TinyModelConfig
from sftflow.tasks.lib.chat_tokens import tokenize_conversation
from sftflow.tasks.lib.train_worker import (
    TrainJob,
    sequence_digest,
    split_packed_row,
    trained_sequences,
    with_end_of_turn,
)


ROOT = Path(__file__).resolve().parents[3]
MAX_LENGTH = 64
TINY = TinyModelConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       vocab_size=400, max_position_embeddings=128)


# ------------------------------------------------------------------------------ pure pieces --
def test_sequence_digest_is_sha256_of_comma_joined_ids():
    import hashlib

    assert sequence_digest([3, 14, 15]) == hashlib.sha256(b"3,14,15").hexdigest()
    assert sequence_digest([1, 23]) != sequence_digest([12, 3])


def test_split_packed_row_at_sequence_lengths_and_refuses_a_mismatch():
    assert split_packed_row([1, 2, 3, 4, 5, 6], [3, 1, 2]) == [[1, 2, 3], [4], [5, 6]]
    assert split_packed_row([1, 2], None) == [[1, 2]] == split_packed_row([1, 2], [])
    with pytest.raises(ValueError, match="seq_lengths summing to 3"):
        split_packed_row([1, 2], [1, 2])


def test_trained_sequences_counts_every_example_and_dedups_digests():
    rows = [{"input_ids": [1, 2, 3, 1, 2, 3], "seq_lengths": [3, 3]}, {"input_ids": [9], "seq_lengths": [1]}]
    result = trained_sequences(rows)
    assert (result["n_rows"], result["n_sequences"], result["n_tokens"]) == (2, 3, 7)
    assert result["sha256"] == sorted({sequence_digest([1, 2, 3]), sequence_digest([9])})


def test_end_of_turn_is_added_to_eos_ids_once():
    assert with_end_of_turn(5, 2) == [5, 2]
    assert with_end_of_turn([2, 5], 2) == [2, 5]
    assert with_end_of_turn(None, 2) == [2]


def test_job_json_round_trips_and_refuses_unknown_fields(tmp_path):
    job = TrainJob(base_model="m", chat_template="t", train_files=["a.parquet"], checkpoint_dir="c", output_dir="o",
                   method="lora", lora=LoraSettings(r=4), sft={"max_steps": 2})
    assert TrainJob.read(job.write(tmp_path / "job.json")) == job
    (tmp_path / "bad.json").write_text(json.dumps({**job.model_dump(), "epochs": 3}))
    with pytest.raises(ValueError, match="epochs"):
        TrainJob.read(tmp_path / "bad.json")


# ------------------------------------------------------------------------------- real runs --
def conversations() -> list[dict]:
    rows = []
    for i in range(10):
        messages = [{"role": "user", "content": f"Name the number after {i}."},
                    {"role": "assistant", "content": f"The number after {i} is {i + 1}."}]
        if i % 4 == 0:
            messages = [{"role": "system", "content": "Be brief."}, *messages,
                        {"role": "user", "content": "And the one before?"},
                        {"role": "assistant", "content": f"Before {i + 1} comes {i}."}]
        rows.append({"example_id": f"ex-{i}", "category": "qa", "source": "counting", "messages": messages})
    long_answer = " ".join(f"word{k}" for k in range(60))  # longer than MAX_LENGTH: truncated
    rows.append({"example_id": "ex-long", "category": "qa", "source": "counting",
                 "messages": [{"role": "user", "content": "Say many words."},
                              {"role": "assistant", "content": long_answer}]})
    return rows


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from sftflow.tasks.lib.tiny_model import build_tiny_llama, conversation_texts

    folder = tmp_path_factory.mktemp("worker")
    rows = conversations()
    pq.write_table(pa.Table.from_pylist(rows), folder / "train.parquet")
    build_tiny_llama(conversation_texts(rows), TINY, 0, folder / "base")
    return folder


def make_job(workspace: Path, run: str, *, max_steps: int, packing: bool, method: str = "full",
             checkpoint_dir: Path | None = None, train_template_tokens: bool = True) -> TrainJob:
    sft = {"max_steps": max_steps, "per_device_train_batch_size": 2, "max_length": MAX_LENGTH, "packing": packing,
           "use_cpu": True, "bf16": False, "activation_checkpointing": False, "logging_steps": 1, "save_steps": 1,
           "save_total_limit": 2, "learning_rate": 1e-3, "seed": 0, "data_seed": 0, "dataloader_num_workers": 0}
    if packing:
        sft["packing_strategy"] = "bfd"
    return TrainJob(base_model=str(workspace / "base"), chat_template=CHATML_TEMPLATE,
                    train_files=[str(workspace / "train.parquet")],
                    checkpoint_dir=str(checkpoint_dir or workspace / run / "checkpoints"),
                    output_dir=str(workspace / run / "output"), method=method,
                    lora=LoraSettings(r=4, alpha=8, train_template_tokens=train_template_tokens),
                    sft=sft, attn_implementation="sdpa", sample_ids=["ex-0", "ex-long"])


def run_worker(job: TrainJob, folder: Path) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    job_path = job.write(folder / "job.json")
    done = subprocess.run([sys.executable, "-m", "sftflow.tasks.lib.train_worker", str(job_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.fixture(scope="module")
def full_run(workspace):
    job = make_job(workspace, "full", max_steps=2, packing=True)
    log = run_worker(job, workspace / "full")
    return job, Path(job.output_dir), log


def expected_digests(workspace: Path) -> list[str]:
    """How TRL should tokenize every row (chat_tokens reproduces its call), truncated to max_length."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(workspace / "base")
    return [sequence_digest(tokenize_conversation(tokenizer, CHATML_TEMPLATE, row["messages"], MAX_LENGTH)["input_ids"])
            for row in conversations()]


def test_full_run_saves_safetensors_template_and_reports(full_run, workspace):
    job, out, log = full_run
    assert (out / "model.safetensors").is_file() and not (out / "pytorch_model.bin").exists()
    assert (out / "chat_template.jinja").read_bytes() == CHATML_TEMPLATE.encode("utf-8")
    history = json.loads((out / "log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == [1, 2]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 2 and metrics["resumed_from_checkpoint"] is None
    assert metrics["tokens_processed"] > 0 and metrics["tokens_per_second"] > 0
    # one step line per logged step; packed rows hold several conversations each (2 rows per step)
    steps = [line for line in log.splitlines() if line.startswith("[train] step ")]
    assert [line.split()[2] for line in steps] == ["1/2", "2/2"]
    assert metrics["mean_conversations_per_step"] > 2 and 0 < metrics["mean_tokens_per_step"] <= 2 * MAX_LENGTH
    assert metrics["mean_tokens_per_step"] * 2 == metrics["tokens_processed"]  # TRL's own count agrees
    assert "it/s]" not in log and "%|" not in log  # no tqdm bars
    generation = json.loads((out / "generation_config.json").read_text())
    assert metrics["end_of_turn_token"] == "<|im_end|>"
    assert metrics["end_of_turn_token_id"] in generation["eos_token_id"]
    assert sorted(p.name for p in (Path(job.checkpoint_dir)).glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]


def test_trained_sequences_are_the_packed_examples_trl_tokenized(full_run, workspace):
    _, out, _ = full_run
    sequences = json.loads((out / "trained_sequences.json").read_text())
    expected = expected_digests(workspace)
    assert sequences["packing"] is True
    assert sequences["n_sequences"] == len(expected) == 11  # every row, unpacked again
    assert sequences["n_rows"] < sequences["n_sequences"]  # ... from fewer packed rows
    assert sequences["sha256"] == sorted(set(expected))
    assert [s["example_id"] for s in sequences["samples"]] == ["ex-0", "ex-long"]
    assert sequences["samples"][1]["n_tokens"] == MAX_LENGTH
    assert {s["sha256"] for s in sequences["samples"]} <= set(sequences["sha256"])


def test_second_run_resumes_from_the_last_checkpoint(full_run, workspace):
    first, _, _ = full_run
    checkpoints = workspace / "resume" / "checkpoints"
    shutil.copytree(first.checkpoint_dir, checkpoints)
    job = make_job(workspace, "resume", max_steps=4, packing=True, checkpoint_dir=checkpoints)
    log = run_worker(job, workspace / "resume")
    metrics = json.loads((Path(job.output_dir) / "metrics.json").read_text())
    assert metrics["resumed_from_checkpoint"] == str(checkpoints / "checkpoint-2")
    assert "[train] resuming from" in log
    assert [line.split()[2] for line in log.splitlines() if line.startswith("[train] step ")] == ["3/4", "4/4"]
    history = json.loads((Path(job.output_dir) / "log_history.json").read_text())
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4]
    assert metrics["global_step"] == 4


def embedding_rows(base: Path, adapter: Path):
    """(base input rows, adapter input rows, adapter output rows, adapter-disabled input rows), each
    as the loaded model computes them for every token id (PeftModel on the base, as evaluate does)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, use_safetensors=True)
    ids = torch.arange(model.config.vocab_size)
    with torch.no_grad():
        base_rows = model.get_input_embeddings()(ids).clone()
        tuned = PeftModel.from_pretrained(model, adapter).eval()
        tuned_rows = tuned.get_input_embeddings()(ids).clone()
        tuned_output = tuned.get_output_embeddings().weight.clone()
        with tuned.disable_adapter():
            disabled_rows = tuned.get_input_embeddings()(ids).clone()
    return base_rows, tuned_rows, tuned_output, disabled_rows


def changed_rows(before, after) -> list[int]:
    return sorted(int(i) for i in (before != after).any(dim=1).nonzero().flatten())


def test_lora_without_packing_saves_an_adapter(workspace):
    from transformers import AutoTokenizer

    job = make_job(workspace, "lora", max_steps=2, packing=False, method="lora")
    run_worker(job, workspace / "lora")
    out = Path(job.output_dir)
    # the template's special tokens are trained (ChatML on the tiny base): recorded, saved, loaded
    tokenizer = AutoTokenizer.from_pretrained(workspace / "base")
    template_ids = sorted(tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]))
    base_rows, tuned_rows, tuned_output, disabled_rows = embedding_rows(workspace / "base", out)
    assert changed_rows(base_rows, tuned_rows) == template_ids  # every other row is the base's
    assert changed_rows(base_rows, tuned_output) == template_ids  # tied lm_head: the same rows
    assert changed_rows(base_rows, disabled_rows) == []  # disable_adapter gives the base back
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["trainable_tokens"]) == ["<|im_end|>", "<|im_start|>"]
    assert sorted(metrics["trainable_tokens"].values()) == template_ids
    weights = [p.name for p in out.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth", ".pkl")]
    assert weights == ["adapter_model.safetensors"] or sorted(weights) == ["adapter_model.safetensors",
                                                                           "training_args.bin"]
    assert (out / "adapter_config.json").is_file() and (out / "adapter_model.safetensors").is_file()
    assert not (out / "model.safetensors").exists()
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"], adapter["task_type"]) == (4, 8, "CAUSAL_LM")
    assert (out / "chat_template.jinja").read_bytes() == CHATML_TEMPLATE.encode("utf-8")
    sequences = json.loads((out / "trained_sequences.json").read_text())
    assert sequences["n_rows"] == sequences["n_sequences"] == 11  # unpacked: one row per example
    assert sequences["sha256"] == sorted(set(expected_digests(workspace)))


def test_lora_leaves_template_token_rows_alone_when_told(workspace):
    job = make_job(workspace, "lora-frozen-tokens", max_steps=2, packing=False, method="lora",
                   train_template_tokens=False)
    run_worker(job, workspace / "lora-frozen-tokens")
    out = Path(job.output_dir)
    assert json.loads((out / "metrics.json").read_text())["trainable_tokens"] == {}
    base_rows, tuned_rows, tuned_output, _ = embedding_rows(workspace / "base", out)
    assert changed_rows(base_rows, tuned_rows) == [] and changed_rows(base_rows, tuned_output) == []
