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

Output: no progress bars, transformers' and TRL's warnings (the stage keeps them in train.log) and
one `[train] step ...` line per logging step (tasks/lib/train_callbacks.py).

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
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Literal

from pydantic import BaseModel, ConfigDict, Field

from sftflow.tasks.core.children import DIE_WITH_FLOW_ENV, die_with_parent
from sftflow.tasks.core.failpoints import FAILPOINT_ENV
from sftflow.tasks.core.recipe_training import LoraSettings
from sftflow.tasks.lib.train_callbacks import (
    counting_trainer_class,
    crash_test_callback,
    quiet_progress,
    step_line_callback,
    train_metrics,
)
from sftflow.tasks.lib.train_model import expose_output_bias, load_training_model, peft_config, trainable_template_tokens

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


def sample_sequences(job: TrainJob, tokenizer, max_length: int) -> list[dict[str, Any]]:
    """How this process tokenizes the sample rows (same call as TRL): compared in the round trip."""
    if not job.sample_ids:
        return []
    import pyarrow.parquet as pq

    from sftflow.tasks.lib.chat_tokens import tokenize_conversation

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
