"""Train: TRL's SFTTrainer on the mixed train shards, in its own process, checked before and after.

```
mix shards ─► base model + tokenizer ─► chat template ─► mask audit ─► job.json
           ─► accelerate launch -m tasks.lib.train_worker ─► round-trip check ─► plot, config, card
```

Choices this stage makes (and why):

- **Training runs in a child process** (`accelerate launch`, `--cpu` without CUDA): an OOM kill
  or a CUDA crash fails this task with the tail of the training log, never the flow process,
  and `train.num_processes` GPUs work the same way.
- **Every train row gets a decision** (one per example_id; upsampled copies share it): rows that
  truncation to max_length leaves without a supervised token are dropped as
  `no_supervised_tokens` (TRL would drop them silently, or train on them with no loss when
  packing) and the worker never sees them, so the catalog's lineage lists exactly the rows
  trained on. Rows with no supervised token even untruncated are a template problem: they stay
  and the audit stops the run.
- **Masks are audited before launching** (tasks/lib/mask_audit.py): a template that supervises
  nothing, supervises prompts, or never the end-of-turn token stops the stage with an actionable
  error and `mask_audit.json` in the work folder, instead of an hour of training on the wrong
  tokens. The audit covers at most AUDIT_MAX_ROWS rows (a seeded sample) to bound its cost.
- **The round trip is checked on the saved folder**: train rows are re-rendered with the saved
  tokenizer's own template and their token sequences must be among those the trainer really
  trained on; the saved template must equal the one used byte for byte, and the saved
  generation_config must stop on the template's end-of-turn token. A model folder that would be
  prompted differently from how it was trained is never handed on.
- **Work folder, resumable**: `data/warehouse/work/train/<key>/` holds `base/` (builtin model),
  `job.json`, `checkpoints/`, `output/` and `reports/`. It is keyed like the artifact, so a
  retried or re-run task resumes from the newest checkpoint. The checkpoints stay there after
  the artifact is committed (the artifact gets the final model, not the optimizer state); the
  next train run deletes work folders whose artifact exists (`prune_finished_work`).
- **Defaults**: learning rate 2e-5 (full) or 2e-4 (LoRA); packing `auto` packs (BFD, padding-free)
  when the mean conversation is under half of max_length; bf16 `auto` means CUDA with bf16
  support; attention `auto` is flash_attention_2 on CUDA when `flash_attn` imports, else sdpa.
  Packed (padding-free) conversations stay isolated on sdpa/eager because transformers builds
  the per-conversation mask from the restarting `position_ids` whenever a forward runs without a
  cache; the worker sets `config.use_cache = False` on the model it trains, so that holds for
  every forward (flash-attention uses the collator's `cu_seq_lens`).
- **Output**: every line of the training process goes to `reports/train.log`; only its
  `[train] ...` lines (one per logging step: loss, grad norm, lr, tokens/s, conversations and
  tokens per step) are echoed, or, on a terminal, a single progress bar follows them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import deque
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from tasks.core.artifacts import ArtifactStore, Manifest
from tasks.core.children import DIE_WITH_FLOW_ENV, die_with_parent
from tasks.core.hashing import sha256_file, sha256_tree
from tasks.core.recipe import Recipe, TrainConfig
from tasks.core.reasons import Reason
from tasks.core.records import DecisionLog, StageOutput, empty_records
from tasks.core.stage import StageCall, plan_call, stage_task
from tasks.core.weights import require_safetensors
from tasks.core.workspace import Workspace, model_location as locate_model
from tasks.lib.chat_template import end_of_turn_token, select_chat_template
from tasks.lib.devices import compute_device
from tasks.lib.mask_audit import audit_masks, check_audit, supervised_counts, tokenize_conversation
from tasks.lib.model_card import render_model_card
from tasks.lib.tiny_model import BUILTIN_TINY_LLAMA, build_tiny_llama, conversation_texts
from tasks.lib.train_worker import (
    CHAT_TEMPLATE_FILE,
    LOG_HISTORY_FILE,
    METRICS_FILE,
    TRAINED_SEQUENCES_FILE,
    TrainJob,
    sequence_digest,
)

LIBRARIES = ("trl", "transformers", "peft", "accelerate", "torch", "tokenizers", "datasets")

DEFAULT_LEARNING_RATE = {"full": 2e-5, "lora": 2e-4}
SHARD_COLUMNS = ("example_id", "category", "source", "messages")
TRAIN, EVAL = "train", "eval"
AUDIT_MAX_ROWS = 5000  # the audit renders growing prefixes per row: bounded cost on big mixes
ROUNDTRIP_ROWS = 32  # train rows re-rendered after saving (at least MIN_ROUNDTRIP_ROWS when there are)
MIN_ROUNDTRIP_ROWS = 20
LOG_TAIL_LINES = 60
TRAINING_ARGS_FILE = "training_args.bin"  # transformers.trainer.TRAINING_ARGS_NAME
SAVE_TOTAL_LIMIT = 2  # the newest checkpoint is the resume point; one more survives a crash mid-save


class RoundTripError(RuntimeError):
    """The saved model folder would not render train rows as they were trained."""


class TrainingFailed(RuntimeError):
    """The training process exited with an error; the message carries the tail of its log."""


# ------------------------------------------------------------------------- decisions, pure --
def wants_packing(packing: bool | str, mean_tokens: float, max_length: int) -> bool:
    """Packing decision: explicit True/False, or auto = the mean row fills under half of max_length.

    >>> wants_packing("auto", 100.0, 512), wants_packing("auto", 300.0, 512), wants_packing(False, 1.0, 512)
    (True, False, False)
    """
    if packing == "auto":
        return mean_tokens < max_length / 2
    return bool(packing)


def use_bf16(setting: bool | str, device: str, bf16_supported: bool) -> bool:
    """bf16 as the recipe says; `auto` = CUDA that supports it (CPU autocast bf16 is slow).

    >>> use_bf16("auto", "cuda", True), use_bf16("auto", "cpu", True), use_bf16(True, "cpu", False)
    (True, False, True)
    """
    if setting == "auto":
        return device == "cuda" and bf16_supported
    return bool(setting)


def sft_kwargs(cfg: TrainConfig, device: str, mean_tokens: float, *, bf16_supported: bool | None = None,
               has_eval: bool = False) -> dict[str, Any]:
    """Keyword arguments of trl.SFTConfig for this recipe (output_dir and assistant_only_loss are
    added by the worker). `device` is "cuda" or "cpu"; `mean_tokens` is the mean untruncated
    conversation length under the training template (from the mask audit)."""
    if bf16_supported is None:
        bf16_supported = device == "cuda" and _cuda_bf16_supported()
    packing = wants_packing(cfg.packing, mean_tokens, cfg.max_length)
    on_cpu = device == "cpu"
    kwargs: dict[str, Any] = {
        "learning_rate": cfg.learning_rate or DEFAULT_LEARNING_RATE[cfg.method],
        "lr_scheduler_type": cfg.lr_scheduler_type,
        # transformers 5 dropped warmup_ratio: a float in [0, 1) here is a ratio of the total steps
        "warmup_steps": cfg.warmup_ratio,
        "per_device_train_batch_size": cfg.per_device_train_batch_size,
        "per_device_eval_batch_size": cfg.per_device_train_batch_size,
        "gradient_accumulation_steps": cfg.gradient_accumulation_steps,
        "weight_decay": cfg.weight_decay,
        "seed": cfg.seed,
        "data_seed": cfg.seed,
        "max_length": cfg.max_length,
        "packing": packing,
        "bf16": use_bf16(cfg.bf16, device, bf16_supported),
        "use_cpu": on_cpu,
        # TRL turns checkpointing on by default; it buys memory with ~20% more compute, worth it
        # on a GPU with a real model, not for the builtin model or on CPU (RAM is rarely the limit)
        "activation_checkpointing": not on_cpu and cfg.model != BUILTIN_TINY_LLAMA,
        "logging_steps": cfg.logging_steps,
        "logging_first_step": True,
        "save_strategy": "steps",
        "save_steps": cfg.save_steps,
        "save_total_limit": SAVE_TOTAL_LIMIT,
        # rows are tokenized up front, so loader workers would only add fork overhead on CPU
        "dataloader_num_workers": 0 if on_cpu else 2,
        "dataloader_pin_memory": not on_cpu,
        "eval_strategy": "steps" if has_eval else "no",
        "report_to": [],
    }
    if has_eval:
        kwargs["eval_steps"] = cfg.save_steps
    if packing:
        # padding-free: examples are isolated by the mask transformers derives from the restarting
        # position_ids in cache-less forwards (the worker's model has use_cache=False)
        kwargs["packing_strategy"] = "bfd"
    if cfg.max_steps is not None:
        kwargs["max_steps"] = cfg.max_steps
    else:
        kwargs["num_train_epochs"] = cfg.num_train_epochs
    return kwargs


def attn_implementation(cfg: TrainConfig, device: str) -> str:
    """The recipe's choice, or auto: flash_attention_2 on CUDA when flash_attn imports, else sdpa."""
    if cfg.attn_implementation != "auto":
        return cfg.attn_implementation
    if device == "cuda" and use_bf16(cfg.bf16, device, _cuda_bf16_supported()):  # FA2 needs bf16 weights
        try:
            import flash_attn  # noqa: F401
        except ImportError:
            return "sdpa"
        return "flash_attention_2"
    return "sdpa"


def _cuda_bf16_supported() -> bool:
    import torch

    return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())


def seeded_order(example_ids: list[str], seed: int, salt: str) -> list[int]:
    """Indices ordered by sha256(salt, seed, id): a sample that does not depend on row order."""
    def key(i: int) -> str:
        return hashlib.sha256(f"{salt}\x1f{seed}\x1f{example_ids[i]}".encode("utf-8")).hexdigest()

    return sorted(range(len(example_ids)), key=key)


def sample_rows(rows: list[dict[str, Any]], n_rows: int, seed: int, salt: str) -> list[dict[str, Any]]:
    """Up to `n_rows` rows with distinct example_ids (upsampled copies count once), seeded."""
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        unique.setdefault(row["example_id"], row)
    ids = sorted(unique)
    return [unique[ids[i]] for i in seeded_order(ids, seed, salt)[:n_rows]]


def supervision_decisions(rows: list[dict[str, Any]], tokenizer, template: str,
                          max_length: int) -> tuple[DecisionLog, set[str]]:
    """One decision per distinct example_id of `rows`: `no_supervised_tokens` when truncation to
    max_length (keeping the start, as TRL does) leaves no supervised token although the whole
    conversation has some, else `kept`. Returns the log and the dropped ids.

    Every distinct row is tokenized once (the audit only samples): the rows dropped here are
    exactly the rows TRL would drop, which the worker re-checks on its own dataset.
    """
    log, dropped = DecisionLog(), set()
    seen: set[str] = set()
    for row in rows:
        example_id = row["example_id"]
        if example_id in seen:
            continue
        seen.add(example_id)
        counts = supervised_counts(tokenizer, template, row["messages"], max_length)
        if counts["supervised"] and not counts["supervised_truncated"]:
            log.add(example_id, Reason.NO_SUPERVISED_TOKENS, score=float(counts["n_tokens"]), detail={
                "max_length": max_length, "n_tokens": counts["n_tokens"],
                "supervised_tokens_before_truncation": counts["supervised"],
                "first_supervised_position": counts["first_supervised_position"]})
            dropped.add(example_id)
        else:
            log.add(example_id, Reason.KEPT)
    return log, dropped


def audit_sample(rows: list[dict[str, Any]], max_rows: int, seed: int) -> list[dict[str, Any]]:
    """All rows (copies included: the audit describes the mixture) or a seeded sample of max_rows."""
    if len(rows) <= max_rows:
        return rows
    order = seeded_order([f"{r['example_id']}#{i}" for i, r in enumerate(rows)], seed, "train-audit")
    return [rows[i] for i in sorted(order[:max_rows])]


# ---------------------------------------------------------------------------------- inputs --
def shard_paths(manifest: Manifest, split: str) -> list[Path]:
    """The mix artifact's shard files of one split, in the order its manifest lists them."""
    shards = manifest.stats.get("shards")
    if shards is not None:
        return [manifest.file(s["name"]) for s in shards if s["split"] == split and s["n_rows"]]
    return manifest.files_named(f"shards/{split}/")


def read_shard_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """messages, category, source, example_id of every row of the shards (copies kept)."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        names = pq.read_schema(path).names
        missing = [c for c in SHARD_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"train: shard {path} lacks columns {missing}; it must come from the mix stage")
        rows.extend(pq.read_table(path, columns=list(SHARD_COLUMNS)).to_pylist())
    return rows


def model_location(model: str, workspace: Workspace) -> str:
    """A confined local folder (absolute) or a hub id. `builtin:*` is built, not located."""
    if model.startswith("builtin:"):
        raise ValueError(f"train.model {model!r}: the only builtin model is {BUILTIN_TINY_LLAMA}")
    return str(locate_model(model, workspace.resolve_input, "train.model"))


def load_tokenizer(location: str, cfg: TrainConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(location, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)


# ---------------------------------------------------------------------------------- launch --
def launch_command(job_path: Path, num_processes: int, use_cpu: bool, config_file: Path | None = None) -> list[str]:
    """`accelerate launch` through this interpreter (no reliance on PATH).

    With `config_file` (train.accelerate_config) the launch is the file's: processes, machines,
    machine rank, FSDP/DeepSpeed. Without it, one machine, `num_processes` processes, and no
    mixed precision from accelerate (SFTConfig's bf16 decides it)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is not None:
        return [*launcher, "--config_file", str(config_file), "-m", "tasks.lib.train_worker", str(job_path)]
    command = [*launcher, "--num_processes", str(num_processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if use_cpu:  # explicit thread count: accelerate otherwise warns that it picked one
        threads = max(1, (os.cpu_count() or 1) // num_processes)
        command += ["--cpu", "--num_cpu_threads_per_process", str(threads)]
    return [*command, "-m", "tasks.lib.train_worker", str(job_path)]


ECHOED_PREFIX = "[train] "  # the worker's own lines (tasks/lib/train_worker.py step_line, resume notice)


def step_progress(line: str) -> tuple[int, int] | None:
    """(step, max_steps) of a worker step line, else None.

    >>> step_progress("[train] step 25/300 loss 4.812 lr 1.9e-03"), step_progress("Map: 100%|###|")
    ((25, 300), None)
    """
    if not line.startswith("[train] step "):
        return None
    done, _, total = line.split()[2].partition("/")
    return (int(done), int(total)) if done.isdigit() and total.isdigit() else None


class _StepBar:
    """One tqdm bar on a terminal, moved by the worker's step lines, below the lines themselves.

    Every line is still printed (the Prefect logger relays prints to the run's log, which the UI
    shows): the bar is cleared, the line printed, and the bar drawn again under it."""

    def __init__(self) -> None:
        self.bar = None

    def show(self, line: str) -> None:
        from tqdm import tqdm

        if self.bar is not None:
            self.bar.clear()
        print(line, flush=True)
        progress = step_progress(line)
        if progress is None:
            if self.bar is not None:
                self.bar.refresh()
            return
        step, total = progress
        if self.bar is None:
            self.bar = tqdm(total=total, desc="train", unit="step", dynamic_ncols=True)
        self.bar.update(step - self.bar.n)
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_logged(command: list[str], cwd: Path, log_path: Path, echo: bool = True) -> None:
    """Run `command`, writing all its output to `log_path`; raise TrainingFailed with the tail of
    the log on a non-zero exit.

    With `echo`, only the worker's `[train] ...` lines reach stdout (the Prefect logger relays
    stdout, and a run's progress bars and library warnings would be hundreds of lines); on a
    terminal a single progress bar stays under them."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(cwd), *filter(None, [env.get("PYTHONPATH")])])
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env[DIE_WITH_FLOW_ENV] = "1"
    tail: deque[str] = deque(maxlen=LOG_TAIL_LINES)
    bar = _StepBar() if echo and sys.stdout.isatty() else None
    log_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with open(log_path, "w", encoding="utf-8") as log, subprocess.Popen(
            command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            encoding="utf-8", errors="replace", bufsize=1,
            preexec_fn=functools.partial(die_with_parent, os.getpid()),
        ) as process:
            assert process.stdout is not None
            for line in process.stdout:
                log.write(line)
                tail.append(line.rstrip("\n")[-500:])  # a stray progress bar grows with every \r update
                if echo and line.startswith(ECHOED_PREFIX):
                    if bar is not None:
                        bar.show(line.rstrip("\n"))
                    else:
                        print(line, end="", flush=True)
            code = process.wait()
    finally:
        if bar is not None:
            bar.close()
    if code != 0:
        raise TrainingFailed(
            f"training process exited with code {code} (full log: {log_path}); last lines:\n" + "\n".join(tail)
        )


# ------------------------------------------------------------------------------ round trip --
def roundtrip_check(output_dir: Path, rows: list[dict[str, Any]], template_used: str, max_length: int,
                    packing: bool) -> dict[str, Any]:
    """Check the SAVED folder renders `rows` exactly as they were trained. Returns the JSON report
    (key "ok"); raising is the caller's choice, so the report can be written first."""
    from transformers import AutoTokenizer, GenerationConfig

    output_dir = Path(output_dir)
    sequences = json.loads((output_dir / TRAINED_SEQUENCES_FILE).read_text(encoding="utf-8"))
    trained = set(sequences["sha256"])
    worker_samples = {s["example_id"]: s["sha256"] for s in sequences.get("samples", [])}
    template_file = output_dir / CHAT_TEMPLATE_FILE
    saved_bytes = template_file.read_bytes() if template_file.is_file() else None
    tokenizer = AutoTokenizer.from_pretrained(str(output_dir))
    saved_template = tokenizer.chat_template
    problems: list[str] = []

    template_ok = saved_bytes == template_used.encode("utf-8") and saved_template == template_used
    if not template_ok:
        problems.append(f"{template_file} differs from the chat template used in training")

    checked, skipped, missing = [], [], []
    for row in rows:
        encoded = tokenize_conversation(tokenizer, saved_template, row["messages"], max_length)
        if not packing and not any(encoded["assistant_masks"]):
            skipped.append(row["example_id"])  # TRL drops examples truncated to no supervised token
            continue
        digest = sequence_digest(encoded["input_ids"])
        checked.append(row["example_id"])
        if digest not in trained:
            worker = worker_samples.get(row["example_id"])
            missing.append({"example_id": row["example_id"], "sha256": digest,
                            "worker_sha256": worker, "worker_sha256_trained": worker in trained if worker else None})
    if missing:
        problems.append(f"{len(missing)} of {len(checked)} re-rendered train rows are not among the trained "
                        "sequences (see `missing`: worker_sha256_trained=true means training tokenized them "
                        "as expected and the saved tokenizer/template changed them)")
    if not checked:
        problems.append("no train row could be re-rendered and checked")

    try:
        eot = end_of_turn_token(saved_template or template_used, tokenizer)
        eot_id = tokenizer.convert_tokens_to_ids(eot)
    except ValueError as exc:
        eot, eot_id = None, None
        problems.append(str(exc))
    generation_file = output_dir / "generation_config.json"
    eos_ids: list[int] = []
    if generation_file.is_file():
        eos = GenerationConfig.from_pretrained(str(output_dir)).eos_token_id
        eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if eot_id is not None and eot_id not in eos_ids:
        problems.append(f"generation_config.json eos_token_id {eos_ids} lacks the end-of-turn token "
                        f"{eot!r} (id {eot_id}): generation would not stop at the end of a turn")

    return {
        "ok": not problems,
        "problems": problems,
        "template_byte_identical": template_ok,
        "n_rows_checked": len(checked),
        "n_rows_skipped_fully_masked": len(skipped),
        "n_missing": len(missing),
        "missing": missing[:20],
        "checked_example_ids": checked,
        "n_trained_sequences": sequences.get("n_sequences"),
        "end_of_turn_token": eot,
        "end_of_turn_token_id": eot_id,
        "generation_eos_token_ids": eos_ids,
        "max_length": max_length,
        "packing": packing,
    }


def require_roundtrip(report: dict[str, Any], where: Path) -> None:
    if not report["ok"]:
        raise RoundTripError(
            f"template round trip failed for {where}: " + "; ".join(report["problems"])
            + " — the folder is not handed on; fix the tokenizer/template saving, then re-run"
        )


# ----------------------------------------------------------------------------- reports --
def plot_training(log_history: list[dict[str, Any]], path: Path) -> Path:
    """training.png: loss (and eval loss), learning rate and grad norm against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("loss", ("loss", "eval_loss")), ("learning rate", ("learning_rate",)), ("grad norm", ("grad_norm",)))
    figure, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for axis, (title, keys) in zip(axes, panels):
        for key in keys:
            points = [(e["step"], e[key]) for e in log_history if key in e and "step" in e]
            if points:
                steps, values = zip(*points)
                axis.plot(steps, values, marker="o" if len(points) < 30 else None, label=key)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        if title == "loss":
            axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def audit_summary(audit: dict[str, Any]) -> dict[str, Any]:
    """The audit numbers that go into manifest stats and the catalog's evals."""
    eot = audit.get("end_of_turn_supervised") or {}
    content = audit.get("assistant_content_supervised") or {}
    return {
        "n_examples": audit.get("n_examples"),
        "supervised_token_share": (audit.get("supervised_token_share") or {}).get("overall"),
        "n_zero_supervised": audit.get("n_zero_supervised"),
        "n_dropped_no_supervised_tokens": audit.get("n_dropped_no_supervised_tokens"),
        "non_assistant_supervised": audit.get("non_assistant_supervised"),
        "end_of_turn_supervised": eot.get("ok"),
        "end_of_turn_share_of_examples": eot.get("share_of_examples"),
        # Lowest per-turn share of assistant content tokens supervised, and the threshold it must meet.
        "assistant_content_min_supervised_share": content.get("min_share"),
        "assistant_content_share_threshold": content.get("threshold"),
        "assistant_turns_below_threshold": content.get("n_turns_below"),
        "assistant_turns_content_not_located": content.get("n_turns_not_located"),
        "mean_tokens": audit.get("mean_tokens"),
        "n_truncated": audit.get("n_truncated"),
        "max_length": audit.get("max_length"),
    }


def prune_finished_work(work_root: Path, store: ArtifactStore, keep: str) -> list[str]:
    """Delete work folders of train keys whose artifact is committed (their checkpoints are spent)."""
    removed = []
    if not work_root.is_dir():
        return removed
    for folder in sorted(p for p in work_root.iterdir() if p.is_dir() and p.name != keep):
        if store.load("train", folder.name, verify=False) is not None:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ main --
def _publish_failed_audit(audit: dict[str, Any], problem: str) -> None:
    """A failed audit stops the run before any artifact exists: show it in the Prefect UI anyway."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:  # called outside a flow (tests, scripts): nothing to publish to
        return
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(audit_summary(audit).items()))
    content = audit.get("assistant_content_supervised") or {}
    below = ""
    if content.get("n_turns_below"):
        below = (f"Assistant turns with less than {content['threshold']:.0%} of their content supervised: "
                 f"{content['n_turns_below']} of {content['n_turns']} (lowest share {content['min_share']:.2f}; "
                 f"example ids: {', '.join(content.get('example_ids_below', []))})\n\n")
    create_markdown_artifact(
        key="sftflow-mask-audit-failed",
        markdown=f"## Mask audit failed\n\n{problem}\n\n| check | value |\n|---|---|\n{rows}\n\n{below}"
                 f"Marked example:\n\n```text\n{audit.get('example_marked', '')}\n```\n",
        description="the run stopped before training",
    )


def run_training(call: StageCall, echo: bool = True) -> StageOutput:
    """Base model, template, audit, launch, round trip, reports; see the module docstring."""
    cfg = TrainConfig.model_validate(call.config)
    if not call.inputs:
        raise ValueError("train: needs the mix artifact as its input")
    workspace = Workspace.from_env(root=call.root, warehouse=call.warehouse)
    work_root = Path(call.warehouse) / "work" / "train"
    prune_finished_work(work_root, call.store, keep=call.key)
    work = work_root / call.key
    work.mkdir(parents=True, exist_ok=True)
    reports = _fresh(work / "reports")
    output_dir = work / "output"
    if output_dir.exists():
        shutil.rmtree(output_dir)

    mix = call.inputs[0]
    train_files, eval_files = shard_paths(mix, TRAIN), shard_paths(mix, EVAL)
    if not train_files:
        raise ValueError(f"train: the mix artifact {mix.path} has no train shards; check mix.total_rows and shares")
    train_rows = read_shard_rows(train_files)

    device = compute_device()
    if device == "cuda":
        import torch

        if cfg.num_processes > torch.cuda.device_count():
            raise ValueError(f"train.num_processes={cfg.num_processes} but only {torch.cuda.device_count()} "
                             "CUDA devices are visible; lower it")
    builtin = cfg.model == BUILTIN_TINY_LLAMA
    if builtin:
        location = str(build_tiny_llama(conversation_texts(train_rows), cfg.tiny, cfg.seed, _fresh(work / "base")))
    else:
        location = model_location(cfg.model, workspace)
        require_safetensors(location, "train.model")  # here, not after a launch and a retry in the worker
    tokenizer = load_tokenizer(location, cfg)
    template, template_origin = select_chat_template(tokenizer, cfg.chat_template, workspace.resolve_input)
    (reports / CHAT_TEMPLATE_FILE).write_bytes(template.encode("utf-8"))

    decisions, dropped = supervision_decisions(train_rows, tokenizer, template, cfg.max_length)
    trained_rows = [r for r in train_rows if r["example_id"] not in dropped]
    if dropped:
        print(f"[train] {len(dropped)} of {len(decisions)} train examples have no supervised token after "
              f"truncation to max_length={cfg.max_length}: dropped as no_supervised_tokens", flush=True)
    # The audit describes what the trainer will see; with every row dropped it describes them all,
    # and check_audit names the truncation problem.
    audit = audit_masks(audit_sample(trained_rows or train_rows, AUDIT_MAX_ROWS, cfg.seed), tokenizer, template,
                        cfg.max_length, cfg.min_content_supervised_share)
    audit["n_dropped_no_supervised_tokens"] = len(dropped)
    audit_path = _write_json(reports / "mask_audit.json", audit)
    try:
        check_audit(audit, cfg.min_content_supervised_share)
    except ValueError as exc:
        _publish_failed_audit(audit, str(exc))
        raise type(exc)(f"{exc} (full audit: {audit_path})") from None

    kwargs = sft_kwargs(cfg, device, float(audit["mean_tokens"]), has_eval=bool(eval_files))
    attention = attn_implementation(cfg, device)
    roundtrip_rows = sample_rows(trained_rows, max(ROUNDTRIP_ROWS, MIN_ROUNDTRIP_ROWS), cfg.seed, "train-roundtrip")
    job = TrainJob(
        base_model=location, revision=None if builtin else cfg.revision, trust_remote_code=cfg.trust_remote_code,
        chat_template=template, train_files=[str(p) for p in train_files], eval_files=[str(p) for p in eval_files],
        checkpoint_dir=str(work / "checkpoints"), output_dir=str(output_dir), method=cfg.method, lora=cfg.lora,
        sft=kwargs, attn_implementation=attention, sample_ids=[r["example_id"] for r in roundtrip_rows],
        exclude_example_ids=sorted(dropped),
    )
    job_path = job.write(work / "job.json")
    accelerate_config = call.params.get("accelerate_config")
    command = launch_command(job_path, cfg.num_processes, use_cpu=device == "cpu",
                             config_file=Path(accelerate_config) if accelerate_config else None)
    run_logged(command, Path(call.root), reports / "train.log", echo=echo)

    adapter_config = output_dir / "adapter_config.json"
    if adapter_config.is_file() and cfg.model.startswith("builtin:"):
        # The adapter names the base folder it was trained on, which is about to move into the
        # artifact: point it at the base's final place so PEFT can load the pair.
        final_base = Path(call.warehouse) / "artifacts" / "train" / call.key / "base_model"
        config = json.loads(adapter_config.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = str(final_base)
        adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    roundtrip = roundtrip_check(output_dir, roundtrip_rows, template, cfg.max_length, packing=kwargs["packing"])
    _write_json(reports / "roundtrip.json", roundtrip)
    require_roundtrip(roundtrip, output_dir)

    # The JSON reports leave the model folder: it holds only what loading the model needs.
    for name in (LOG_HISTORY_FILE, METRICS_FILE, TRAINED_SEQUENCES_FILE):
        shutil.move(str(output_dir / name), str(reports / name))
    # Trainer.save_model also writes training_args.bin, a pickled TrainingArguments that nothing
    # reads back: a pickle has no place in a result (docs/training.md, "What is pickled and why").
    (output_dir / TRAINING_ARGS_FILE).unlink(missing_ok=True)
    log_history = json.loads((reports / LOG_HISTORY_FILE).read_text(encoding="utf-8"))
    metrics = json.loads((reports / METRICS_FILE).read_text(encoding="utf-8"))
    plot_training(log_history, reports / "training.png")
    config_record = {
        "recipe_train": cfg.canonical(), "sft_config": kwargs, "template_origin": template_origin,
        "attn_implementation": attention, "device": device, "base_model": cfg.model,
        "base_model_location": location if not builtin else "base_model/", "launch": command[1:],
    }
    (reports / "training_config.yaml").write_text(yaml.safe_dump(config_record, sort_keys=False), encoding="utf-8")

    summary = audit_summary(audit)
    train_summary = {
        "base_model": cfg.model, "method": cfg.method, "lora": cfg.lora.canonical() if cfg.method == "lora" else None,
        "template_origin": template_origin, "max_length": cfg.max_length, "packing": kwargs["packing"],
        "device": device, "attn_implementation": attention, "sft": kwargs, "metrics": metrics,
        "mask_audit": summary, "roundtrip": {k: roundtrip[k] for k in ("ok", "n_rows_checked", "template_byte_identical")},
        "n_train_rows": len(trained_rows), "n_eval_rows": mix.stats.get("n_eval_rows"),
    }
    (reports / "MODEL_CARD.md").write_text(render_model_card(call.params.get("data_card") or {}, train_summary),
                                           encoding="utf-8")

    files = {"model": output_dir}
    if builtin:
        files["base_model"] = work / "base"
    for name in ("mask_audit.json", "training_config.yaml", LOG_HISTORY_FILE, METRICS_FILE, "training.png",
                 "roundtrip.json", "MODEL_CARD.md", CHAT_TEMPLATE_FILE, TRAINED_SEQUENCES_FILE, "train.log"):
        files[name] = reports / name
    stats = {
        # the ledger counts distinct train examples: n_in = kept + dropped (no_supervised_tokens)
        "n_in": len(decisions),
        "n_out": len(decisions) - len(dropped),
        "n_train_rows": len(trained_rows),  # upsampled copies counted
        "n_dropped_no_supervised_tokens": len(dropped),
        "n_trained_sequences": int(roundtrip.get("n_trained_sequences") or 0),
        "model": {"base_model": cfg.model, "method": cfg.method, "path": "model",
                  # what evaluate loads as the base: the artifact's base_model/ for builtin models
                  "base_location": None if cfg.model.startswith("builtin:") else location,
                  "revision": cfg.revision},
        "mask_audit": summary,
        "train_metrics": metrics,
        "template_origin": template_origin,
        "packing": kwargs["packing"],
        "device": device,
        "attn_implementation": attention,
        "roundtrip_ok": roundtrip["ok"],
        "work_dir": str(work),
    }
    return StageOutput(records=empty_records(), decisions=decisions.to_table(), files=files, stats=stats)


# ------------------------------------------------------------------------------------ plan --
def plan(recipe: Recipe, mixed: Manifest, ws: Workspace, data_card: dict[str, Any]) -> StageCall:
    """The call on the mix artifact: the base model's bytes or pinned revision, the template file,
    the device and the accelerate config are keyed; the data card travels as a parameter."""
    external = []
    if not recipe.train.model.startswith("builtin:"):
        location = model_location(recipe.train.model, ws)
        external.append(sha256_tree(Path(location)) if Path(location).is_dir() else f"hub:{location}@{recipe.train.revision}")
    if recipe.train.chat_template and recipe.train.chat_template.lower() != "chatml":
        external.append(sha256_file(ws.resolve_input(recipe.train.chat_template)))
    # Where it runs changes the result (bf16, attention kernel): a CPU model is no cache hit on a GPU.
    external.append(f"device={compute_device()}")
    params: dict[str, Any] = {"data_card": data_card}
    if recipe.train.accelerate_config:  # processes and machines change the global batch: keyed by bytes
        config_file = ws.resolve_input(recipe.train.accelerate_config)
        external.append(f"accelerate_config={sha256_file(config_file)}")
        params["accelerate_config"] = str(config_file)
    # The data card is descriptive (it names this run): a parameter, not part of the key.
    return plan_call(sys.modules[__name__], recipe.train.canonical(), [mixed], ws, extra_input_hashes=external,
                     params=params)


@stage_task("train")
def train_stage(call: StageCall) -> StageOutput:
    return run_training(call)
