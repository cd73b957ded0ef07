"""The training process: `accelerate launch [--cpu] --num_processes N -m sftflow.tasks.lib.train_worker JOB.json`.

The train stage (tasks/train.py) writes a `TrainJob` as JSON and launches this module in its own
process, so a CUDA/NCCL crash or an out-of-memory kill never takes the Prefect flow down
with it (a killed flow takes the worker with it: tasks/core/children.py), and several GPUs
can run it through accelerate. It can also run as a plain
`python -m sftflow.tasks.lib.train_worker JOB.json` (one process).

What it does, in order:
1. loads the train (and eval) Parquet shards keeping only `messages`: TRL tokenizes, masks and
   packs conversations itself (`assistant_only_loss=True` reads the template's generation marks);
2. loads the base model and tokenizer (`load_training_model`: `config.use_cache = False`, see
   `prepare_for_training`) and sets `tokenizer.chat_template` to the job's template;
3. builds SFTConfig from the stage's kwargs, and SFTTrainer (with a LoRA config for method lora,
   which also trains the rows of the special tokens the template uses: `template_special_tokens`);
4. resumes from the newest checkpoint in `checkpoint_dir` when there is one (a retried or re-run
   train task continues where the crashed one stopped);
5. on the main process saves into `output_dir`: the model (safetensors; the adapter for LoRA),
   the tokenizer (its `chat_template.jinja` checked byte for byte against the job's template), a
   generation_config whose eos_token_id includes the template's end-of-turn token, and
   `log_history.json`, `metrics.json`, `trained_sequences.json`.

Output: tqdm bars and datasets progress bars are off, so stdout/stderr carry transformers' and
TRL's warnings (the stage keeps them in train.log) and one `[train] step ...` line per logging
step (`step_line`), with conversations and tokens per optimizer step counted from the batches
the trainer really trains on (`batch_counts`).

`trained_sequences.json` holds a sha256 of every example-level token sequence that was really in
the trainer's dataset after TRL's processing: packed rows (BFD) are cut back into their examples
at their `seq_lengths` (where the collator restarts `position_ids` at 0). The stage re-renders
train rows with the SAVED tokenizer and requires their digests to be in this set: the proof that
the tokenizer and template shipped with the model are the ones it was trained with.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

from sftflow.tasks.core.children import DIE_WITH_FLOW_ENV, die_with_parent
from sftflow.tasks.core.failpoints import FAILPOINT_ENV
from sftflow.tasks.core.recipe import LoraSettings

JOB_FILE = "job.json"
LOG_HISTORY_FILE = "log_history.json"
METRICS_FILE = "metrics.json"
TRAINED_SEQUENCES_FILE = "trained_sequences.json"
CHAT_TEMPLATE_FILE = "chat_template.jinja"  # what transformers 5 writes next to the tokenizer
MESSAGES_COLUMN = "messages"


class TrainJob(BaseModel):
    """Everything the worker needs; written by the train stage as job.json (paths absolute)."""

    model_config = ConfigDict(extra="forbid")

    base_model: str = Field(description="Local model folder or hub id.")
    revision: str | None = None
    trust_remote_code: bool = False
    chat_template: str = Field(description="Jinja text with {% generation %} markers, saved byte for byte.")
    train_files: list[str] = Field(min_length=1, description="Parquet shards with a `messages` column.")
    eval_files: list[str] = Field(default_factory=list)
    checkpoint_dir: str = Field(description="SFTConfig.output_dir: checkpoints, the resume point.")
    output_dir: str = Field(description="Where the final model, tokenizer and reports are saved.")
    method: Literal["full", "lora"] = "full"
    lora: LoraSettings = Field(default_factory=LoraSettings)
    sft: dict[str, Any] = Field(default_factory=dict, description="SFTConfig keyword arguments.")
    attn_implementation: str | None = "sdpa"
    sample_ids: list[str] = Field(
        default_factory=list,
        description="example_ids of train rows the round-trip check re-renders; the worker records "
        "how it tokenized them itself, to tell a tokenization mismatch from a saving mismatch.",
    )

    exclude_example_ids: list[str] = Field(
        default_factory=list,
        description="example_ids of train rows the train stage dropped as no_supervised_tokens "
        "(truncation leaves them nothing to learn from); left out of the train dataset.",
    )

    @classmethod
    def read(cls, path: str | Path) -> "TrainJob":
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))

    def write(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.model_dump_json(indent=2), encoding="utf-8")
        return path


# ------------------------------------------------------------------------------ pure pieces --
def sequence_digest(token_ids: Iterable[int]) -> str:
    """sha256 of a token-id sequence (decimal ids joined by commas): the round-trip check's unit.

    >>> sequence_digest([1, 2, 3]) == sequence_digest((1, 2, 3)) != sequence_digest([12, 3])
    True
    """
    return hashlib.sha256(",".join(str(int(i)) for i in token_ids).encode("ascii")).hexdigest()


def split_packed_row(input_ids: list[int], seq_lengths: list[int] | None) -> list[list[int]]:
    """The examples of one dataset row: a packed row is cut at its `seq_lengths`, a plain row is one.

    >>> split_packed_row([5, 6, 7, 8, 9], [2, 3])
    [[5, 6], [7, 8, 9]]
    >>> split_packed_row([5, 6, 7], None)
    [[5, 6, 7]]
    """
    if not seq_lengths:
        return [list(input_ids)]
    if sum(seq_lengths) != len(input_ids):
        raise ValueError(f"packed row of {len(input_ids)} tokens has seq_lengths summing to {sum(seq_lengths)}")
    pieces, start = [], 0
    for length in seq_lengths:
        pieces.append(list(input_ids[start:start + length]))
        start += length
    return pieces


def trained_sequences(rows: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Digests and token counts of every example in the processed (tokenized, maybe packed) dataset."""
    digests: list[str] = []
    n_tokens = 0
    n_rows = 0
    for row in rows:
        n_rows += 1
        for example in split_packed_row(row["input_ids"], row.get("seq_lengths")):
            digests.append(sequence_digest(example))
            n_tokens += len(example)
    return {"n_rows": n_rows, "n_sequences": len(digests), "n_tokens": n_tokens, "sha256": sorted(set(digests))}


def with_end_of_turn(eos_token_id: int | list[int] | None, end_of_turn_id: int) -> list[int]:
    """eos ids for generation: the model's own plus the template's end-of-turn id (deduplicated).

    >>> with_end_of_turn(2, 7), with_end_of_turn([2, 7], 7), with_end_of_turn(None, 7)
    ([2, 7], [2, 7], [7])
    """
    ids = [] if eos_token_id is None else [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return ids if end_of_turn_id in ids else [*ids, end_of_turn_id]


def template_special_tokens(template: str, candidates: Iterable[str]) -> list[str]:
    """The tokens among `candidates` (a tokenizer's added/special tokens) whose text appears in the
    chat template, in first-seen order without repeats.

    >>> template_special_tokens("{{ '<|im_start|>' ~ role }}{{ text ~ '<|im_end|>' }}",
    ...                         ["<|endoftext|>", "<|im_end|>", "<|im_start|>", "<|pad|>", "<|im_end|>"])
    ['<|im_end|>', '<|im_start|>']
    """
    seen: list[str] = []
    for token in candidates:
        if token and token in template and token not in seen:
            seen.append(token)
    return seen


def batch_counts(inputs: dict[str, Any]) -> tuple[int, int]:
    """(conversations, tokens) in one batch as the collator hands it to the model.

    Padding-free packing (no attention_mask) flattens the batch into rows whose `position_ids`
    restart at 0 where each conversation starts, with no pad token; otherwise every row is one
    conversation and the attention mask marks its non-pad tokens.

    >>> import torch
    >>> batch_counts({"position_ids": torch.tensor([[0, 1, 2, 0, 1, 0, 1, 2, 3]])})
    (3, 9)
    >>> batch_counts({"input_ids": torch.zeros(2, 4), "attention_mask": torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])})
    (2, 5)
    """
    if "attention_mask" in inputs and inputs["attention_mask"] is not None:
        mask = inputs["attention_mask"]
        return int(mask.shape[0]), int(mask.sum())
    position_ids = inputs["position_ids"]
    return int((position_ids == 0).sum()), int(position_ids.numel())


STEP_LINE_PREFIX = "[train] step "


def step_line(logs: dict[str, Any], step: int, max_steps: int) -> str | None:
    """The one line printed per logging step (None for logs that are not a training step's).

    >>> step_line({"loss": 4.8123, "grad_norm": 1.934, "learning_rate": 0.0019, "tokens_per_second": 5120.4,
    ...            "conversations_per_step": 11.5, "tokens_per_step": 2048.0}, 25, 300)
    '[train] step 25/300 loss 4.812 grad_norm 1.93 lr 1.9e-03 tokens/s 5120 conversations/step 11.5 tokens/step 2048'
    >>> step_line({"eval_loss": 3.0}, 25, 300) is None
    True
    """
    if "loss" not in logs:
        return None
    parts = [f"{STEP_LINE_PREFIX}{step}/{max_steps}", f"loss {logs['loss']:.3f}"]
    for key, label, spec in (("grad_norm", "grad_norm", ".2f"), ("learning_rate", "lr", ".1e"),
                             ("tokens_per_second", "tokens/s", ".0f"),
                             ("conversations_per_step", "conversations/step", ".1f"),
                             ("tokens_per_step", "tokens/step", ".0f")):
        if logs.get(key) is not None:
            parts.append(f"{label} {format(float(logs[key]), spec)}")
    return " ".join(parts)


def peak_memory_bytes() -> tuple[int, str]:
    """(peak bytes, what was measured): CUDA allocations when training ran on a GPU, else max RSS."""
    import torch

    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return int(torch.cuda.max_memory_allocated()), "torch.cuda.max_memory_allocated"
    # ru_maxrss is KiB on Linux (bytes on macOS)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss if sys.platform == "darwin" else rss * 1024), "max_rss"


def train_metrics(train_output_metrics: dict[str, Any], tokens_processed: int | None,
                  log_history: list[dict[str, Any]], resumed_from: str | None,
                  step_totals: dict[str, int] | None = None) -> dict[str, Any]:
    """metrics.json: the trainer's own numbers plus tokens/s over non-pad tokens, peak memory, and
    the mean conversations and tokens per optimizer step (`step_totals`: steps, conversations,
    tokens counted by the trainer over this process's run, summed over all processes)."""
    steps = (step_totals or {}).get("steps") or 0
    runtime_s = float(train_output_metrics.get("train_runtime") or 0.0)
    peak, peak_kind = peak_memory_bytes()
    losses = [e["loss"] for e in log_history if "loss" in e]
    return {
        "train_runtime_s": runtime_s,
        "train_samples_per_second": train_output_metrics.get("train_samples_per_second"),
        "train_steps_per_second": train_output_metrics.get("train_steps_per_second"),
        "train_loss": train_output_metrics.get("train_loss"),
        "first_logged_loss": losses[0] if losses else None,
        "last_logged_loss": losses[-1] if losses else None,
        "global_step": max((e.get("step", 0) for e in log_history), default=0),
        # counted by TRL from attention masks / packed lengths, so padding is excluded; only the
        # tokens of this process's run (a resumed run counts from its resume point)
        "tokens_processed": tokens_processed,
        "tokens_per_second": (tokens_processed / runtime_s) if tokens_processed and runtime_s > 0 else None,
        "peak_memory_bytes": peak,
        "peak_memory_kind": peak_kind,
        "resumed_from_checkpoint": resumed_from,
        "mean_conversations_per_step": step_totals["conversations"] / steps if steps else None,
        "mean_tokens_per_step": step_totals["tokens"] / steps if steps else None,
    }


# --------------------------------------------------------------------------------- the run --
def load_messages(files: list[str], cache_dir: Path, exclude_ids: list[str] | None = None):
    """A datasets.Dataset of the shards' `messages` only (TRL would treat other columns as input),
    without the rows whose example_id is in `exclude_ids` (the train stage's drops)."""
    from datasets import load_dataset

    dataset = load_dataset("parquet", data_files=list(files), split="train", cache_dir=str(cache_dir))
    if MESSAGES_COLUMN not in dataset.column_names:
        raise ValueError(f"train shards {files[0]}...: no `{MESSAGES_COLUMN}` column (found {dataset.column_names})")
    if exclude_ids:
        excluded = set(exclude_ids)
        dataset = dataset.filter(lambda ids: [i not in excluded for i in ids], input_columns="example_id",
                                 batched=True)
    return dataset.select_columns([MESSAGES_COLUMN])


def model_dtype(job: TrainJob):
    """Weights dtype: LoRA under bf16 keeps the frozen base in bf16 (half the memory, adapters
    still train in fp32); full fine-tuning keeps fp32 master weights and lets autocast run bf16
    matmuls, because pure-bf16 AdamW updates at lr ~2e-5 round away to nothing."""
    import torch

    return torch.bfloat16 if job.sft.get("bf16") and job.method == "lora" else torch.float32


def prepare_for_training(model):
    """Set the model up for training: `config.use_cache = False`.

    Why it matters beyond memory: with padding-free packing the collator sends no attention mask,
    only `position_ids` restarting at 0 per conversation, and transformers (masking_utils
    `_preprocess_mask_arguments`) derives the per-conversation causal mask from them only when
    there is no cache. A forward with `use_cache` on creates a DynamicCache first, that detection
    is skipped, and on sdpa/eager the packed conversations attend to each other. TRL 1.16's loss
    (its fused LM head forward) happens to pass use_cache=False; this makes every forward of the
    training model safe (tests/tasks/lib/test_packing_isolation.py), whoever calls it. The worker
    sets it back to True before saving: the saved config is for inference.
    """
    model.config.use_cache = False
    return model


def load_training_model(job: TrainJob):
    """(model, tokenizer) for training: the base in `model_dtype(job)`, prepared for training."""
    from sftflow.tasks.lib.tiny_model import load_causal_lm

    model, tokenizer = load_causal_lm(job.base_model, revision=job.revision, trust_remote_code=job.trust_remote_code,
                                      dtype=model_dtype(job), attn_implementation=job.attn_implementation)
    return prepare_for_training(model), tokenizer


def trainable_template_tokens(job: TrainJob, tokenizer) -> dict[str, int]:
    """{token: id} of the special tokens the job's template uses, when LoRA trains them."""
    if job.method != "lora" or not job.lora.train_template_tokens:
        return {}
    candidates = [*tokenizer.get_added_vocab(), *tokenizer.all_special_tokens]
    return {token: tokenizer.convert_tokens_to_ids(token)
            for token in template_special_tokens(job.chat_template, candidates)}


def peft_config(job: TrainJob, model=None, token_ids: list[int] | None = None):
    """LoraConfig for method lora (None otherwise).

    `token_ids` (the template's special tokens) become PEFT trainable tokens: all-linear LoRA
    freezes embed_tokens and lm_head, so tokens new to the base (ChatML on a base without it)
    would keep their untrained rows. With tied embeddings PEFT ties lm_head to the embedding's
    trainable rows itself; an untied lm_head is named too, so its output rows of those tokens
    train as well (peft 0.21 wraps both as TrainableTokensWrapper; only those rows are saved).
    """
    if job.method != "lora":
        return None
    from peft import LoraConfig

    trainable = None
    if token_ids:
        names = {module: name for name, module in model.named_modules()}
        embedding = names[model.get_input_embeddings()]
        trainable = {embedding: list(token_ids)}
        output = model.get_output_embeddings()
        if output is not None and not getattr(model.config, "tie_word_embeddings", False):
            trainable[names[output]] = list(token_ids)
    return LoraConfig(r=job.lora.r, lora_alpha=job.lora.alpha, lora_dropout=job.lora.dropout,
                      target_modules=job.lora.target_modules, task_type="CAUSAL_LM",
                      trainable_token_indices=trainable)


def sample_sequences(job: TrainJob, tokenizer, max_length: int) -> list[dict[str, Any]]:
    """How this process tokenizes the sample rows (same call as TRL): compared in the round trip."""
    if not job.sample_ids:
        return []
    import pyarrow.parquet as pq

    from sftflow.tasks.lib.mask_audit import tokenize_conversation

    wanted, found = set(job.sample_ids), {}
    for path in job.train_files:
        table = pq.read_table(path, columns=["example_id", MESSAGES_COLUMN])
        for row in table.to_pylist():
            if row["example_id"] in wanted and row["example_id"] not in found:
                ids = tokenize_conversation(tokenizer, job.chat_template, row[MESSAGES_COLUMN], max_length)["input_ids"]
                found[row["example_id"]] = {"example_id": row["example_id"], "n_tokens": len(ids),
                                            "sha256": sequence_digest(ids)}
    return [found[i] for i in job.sample_ids if i in found]


def set_generation_eos(job: TrainJob, trainer, tokenizer) -> tuple[str, int]:
    """Make generation stop on the template's end-of-turn token (it is often not the model's eos)."""
    from sftflow.tasks.lib.chat_template import end_of_turn_token

    end_of_turn = end_of_turn_token(job.chat_template, tokenizer)
    end_of_turn_id = tokenizer.convert_tokens_to_ids(end_of_turn)
    generation_config = trainer.accelerator.unwrap_model(trainer.model).generation_config
    generation_config.eos_token_id = with_end_of_turn(generation_config.eos_token_id, end_of_turn_id)
    if generation_config.pad_token_id is None:
        generation_config.pad_token_id = tokenizer.pad_token_id
    return end_of_turn, end_of_turn_id


def save_reports(job: TrainJob, trainer, tokenizer, end_of_turn: tuple[str, int], resumed_from: str | None,
                 train_output_metrics: dict[str, Any], template_tokens: dict[str, int] | None = None) -> None:
    """Main process only, after trainer.save_model: tokenizer, generation config, the JSON reports."""
    out = Path(job.output_dir)
    tokenizer.save_pretrained(str(out))
    # the adapter folder of LoRA gets it too: evaluation generates with the adapter on the base
    trainer.accelerator.unwrap_model(trainer.model).generation_config.save_pretrained(str(out))

    saved = out / CHAT_TEMPLATE_FILE
    if not saved.is_file() or saved.read_bytes() != job.chat_template.encode("utf-8"):
        raise RuntimeError(
            f"{saved}: the saved chat template differs from the one trained with; the tokenizer "
            "save path rewrote it (transformers version change?) — the model folder would be "
            "rendered differently at inference, so it is not handed over"
        )

    log_history = list(trainer.state.log_history)
    (out / LOG_HISTORY_FILE).write_text(json.dumps(log_history, indent=2), encoding="utf-8")
    tokens = getattr(trainer, "_total_train_tokens", None)  # TRL's running count of non-pad tokens
    if not tokens:
        tokens = max((e.get("num_tokens", 0) for e in log_history), default=0) or None
    metrics = train_metrics(train_output_metrics, int(tokens) if tokens else None, log_history, resumed_from,
                            getattr(trainer, "step_totals", None))
    metrics["end_of_turn_token"], metrics["end_of_turn_token_id"] = end_of_turn
    # LoRA: the template's special tokens whose embedding (and untied output) rows were trained
    metrics["trainable_tokens"] = dict(template_tokens or {})
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2), encoding="utf-8")

    sequences = trained_sequences(trainer.train_dataset.select_columns(
        [c for c in ("input_ids", "seq_lengths") if c in trainer.train_dataset.column_names]))
    max_length = int(job.sft.get("max_length") or 1024)
    sequences["samples"] = sample_sequences(job, tokenizer, max_length)
    sequences["packing"] = bool(job.sft.get("packing"))
    (out / TRAINED_SEQUENCES_FILE).write_text(json.dumps(sequences), encoding="utf-8")


def last_complete_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest checkpoint whose trainer_state.json (written last) exists; partial ones are removed.

    transformers' get_last_checkpoint picks the highest number even when a crash cut that
    checkpoint short, and resuming from it then fails on every retry.
    """
    import shutil

    complete = None
    numbered = sorted((p for p in checkpoint_dir.glob("checkpoint-*") if p.name.split("-")[-1].isdigit()),
                      key=lambda p: int(p.name.split("-")[-1]))
    for path in numbered:
        if _readable_json(path / "trainer_state.json"):
            complete = path
        else:
            shutil.rmtree(path, ignore_errors=True)
    return str(complete) if complete else None


def _readable_json(path: Path) -> bool:
    """The file exists and parses: a kill while trainer_state.json was being written leaves neither."""
    try:
        json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return True


def crash_test_callback():
    """A TrainerCallback that reaches the `train:checkpoint` failpoint after a checkpoint is saved
    (transformers calls on_save once the checkpoint folder is complete)."""
    from transformers import TrainerCallback

    from sftflow.tasks.core.failpoints import failpoint

    class CheckpointFailpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            failpoint("train:checkpoint")

    return CheckpointFailpoint()


def expose_output_bias(model) -> None:
    """Let TRL's fused LM head read `bias` from an lm_head that PEFT wrapped for trainable tokens.

    TRL 1.16's fused loss reads `lm_head.weight` and `lm_head.bias` directly; PEFT 0.21's
    TrainableTokensWrapper answers `.weight` with the merged (trainable-row) weights but has no
    `.bias`, so training would stop with an AttributeError. The wrapped layer's own bias (None for
    Llama-style heads) is set as a plain attribute: nothing is registered or saved.
    """
    from peft.utils.other import TrainableTokensWrapper

    output = model.get_output_embeddings()
    if isinstance(output, TrainableTokensWrapper) and "bias" not in output.__dict__:
        object.__setattr__(output, "bias", output.original_module.bias)


def step_line_callback():
    """A TrainerCallback that prints `step_line` for every training log, on the main process only
    (the stage echoes these lines; everything else stays in train.log)."""
    from transformers import TrainerCallback

    class StepLines(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            line = step_line(logs or {}, state.global_step, state.max_steps) if state.is_world_process_zero else None
            if line:
                print(line, flush=True)

    return StepLines()


def counting_trainer_class():
    """SFTTrainer that counts conversations and tokens per optimizer step.

    A subclass, not a callback: no callback event is given the batches (on_step_end gets the
    state only), and with padding-free packing the number of conversations trained on is only
    visible in the collated `position_ids`. Counts are kept per process and summed over all
    processes when a training log is written (`log` runs on every process at the same steps,
    like the loss all-gather before it), so the logged figures are for the whole run.
    """
    import torch
    from trl import SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._window = [0, 0]  # conversations, tokens since the last training log (this process)
            self._window_start: tuple[int, float] | None = None  # (global step, time) of the window start
            self.step_totals = {"steps": 0, "conversations": 0, "tokens": 0}  # all processes, this run

        def training_step(self, model, inputs, *args, **kwargs):
            if self._window_start is None:
                self._window_start = (self.state.global_step, time.perf_counter())
            conversations, tokens = batch_counts(inputs)
            self._window[0] += conversations
            self._window[1] += tokens
            return super().training_step(model, inputs, *args, **kwargs)

        def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
            if "loss" in logs and self._window_start is not None:
                local = torch.tensor(self._window, dtype=torch.long, device=self.accelerator.device)
                conversations, tokens = (int(v) for v in self.accelerator.reduce(local, reduction="sum"))
                started_step, started_at = self._window_start
                steps = max(self.state.global_step - started_step, 1)
                elapsed_s = time.perf_counter() - started_at
                logs["conversations_per_step"] = conversations / steps
                logs["tokens_per_step"] = tokens / steps
                # wall time since the last training log: checkpoint saves and evals in it count
                logs["tokens_per_second"] = tokens / elapsed_s if elapsed_s > 0 else None
                for key, value in (("steps", steps), ("conversations", conversations), ("tokens", tokens)):
                    self.step_totals[key] += value
                self._window = [0, 0]
                self._window_start = (self.state.global_step, time.perf_counter())
            super().log(logs, start_time)

    return CountingSFTTrainer


def quiet_progress() -> None:
    """No tqdm bars: datasets' (TRL's tokenizing/packing maps), transformers' (loading and writing
    weights) and the hub's; the Trainer's own bar is off through SFTConfig(disable_tqdm=True).
    Warnings still go to stderr, which the stage keeps in train.log."""
    from datasets.utils.logging import disable_progress_bar as datasets_bars_off
    from huggingface_hub.utils import disable_progress_bars as hub_bars_off
    from transformers.utils.logging import disable_progress_bar as transformers_bars_off

    datasets_bars_off()
    hub_bars_off()
    transformers_bars_off()


def run(job: TrainJob) -> None:
    from transformers import PrinterCallback
    from trl import SFTConfig

    quiet_progress()
    checkpoint_dir = Path(job.checkpoint_dir)
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    cache_dir = checkpoint_dir.parent / "datasets-cache"
    train_dataset = load_messages(job.train_files, cache_dir, job.exclude_example_ids)
    wants_eval = job.eval_files and job.sft.get("eval_strategy", "no") != "no"
    eval_dataset = load_messages(job.eval_files, cache_dir) if wants_eval else None

    model, tokenizer = load_training_model(job)
    tokenizer.chat_template = job.chat_template
    template_tokens = trainable_template_tokens(job, tokenizer)

    args = SFTConfig(**{**job.sft, "output_dir": str(checkpoint_dir), "assistant_only_loss": True, "report_to": [],
                        "disable_tqdm": True})
    callbacks = [step_line_callback()]
    if os.environ.get(FAILPOINT_ENV):
        callbacks.append(crash_test_callback())
    trainer = counting_trainer_class()(
        model=model, args=args, train_dataset=train_dataset, eval_dataset=eval_dataset, processing_class=tokenizer,
        peft_config=peft_config(job, model, list(template_tokens.values())), callbacks=callbacks)
    # with tqdm off, Trainer prints every log dict; the step line replaces it
    trainer.remove_callback(PrinterCallback)
    if template_tokens:
        expose_output_bias(trainer.model)

    if not args.packing and len(trainer.train_dataset) < len(train_dataset):
        # TRL drops rows that truncation left with no supervised token, without a word; the
        # train stage already left them out (no_supervised_tokens), so any drop here means the
        # stage's tokenization and TRL's disagree: stop rather than train on an unrecorded set.
        raise RuntimeError(
            f"{len(train_dataset) - len(trainer.train_dataset)} of {len(train_dataset)} train rows have no "
            f"supervised token after truncation to max_length={args.max_length}: raise train.max_length "
            "or lower filters.length.max_total_tokens"
        )
    resume_from = last_complete_checkpoint(checkpoint_dir)
    if resume_from and trainer.is_world_process_zero():
        print(f"[train] resuming from {resume_from}", flush=True)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=resume_from or None)
    metrics = dict(output.metrics)
    metrics.setdefault("train_runtime", time.perf_counter() - started)
    end_of_turn = set_generation_eos(job, trainer, tokenizer)
    # the saved config is for inference, where generation wants the cache back
    trainer.accelerator.unwrap_model(trainer.model).config.use_cache = True
    Path(job.output_dir).mkdir(parents=True, exist_ok=True)
    trainer.save_model(job.output_dir)  # every process: sharded (FSDP/DeepSpeed) weights gather here
    if trainer.is_world_process_zero():
        save_reports(job, trainer, tokenizer, end_of_turn, resume_from, metrics, template_tokens)
    trainer.accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m sftflow.tasks.lib.train_worker JOB.json", file=sys.stderr)
        return 2
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if os.environ.get(DIE_WITH_FLOW_ENV):  # launched by the train stage, not by hand
        die_with_parent()  # with the launcher, which dies with the flow (tasks/lib/train_launch.py run_logged)
    run(TrainJob.read(argv[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
