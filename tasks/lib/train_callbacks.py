"""How the training process hooks into the trainer and reports on it: per-step counts and lines,
progress bars, the crash-test failpoint, and metrics.json.

Output: tqdm bars and datasets progress bars are off (`quiet_progress`), so stdout/stderr carry
transformers' and TRL's warnings (the stage keeps them in train.log) and one `[train] step ...`
line per logging step (`step_line`), with conversations and tokens per optimizer step counted from
the batches the trainer really trains on (`batch_counts`, `counting_trainer_class`).
"""

from __future__ import annotations

import resource
import sys
import time
from typing import Any


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


def crash_test_callback():
    """A TrainerCallback that reaches the `train:checkpoint` failpoint after a checkpoint is saved
    (transformers calls on_save once the checkpoint folder is complete)."""
    from transformers import TrainerCallback

    from sftflow.tasks.core.failpoints import failpoint

    class CheckpointFailpoint(TrainerCallback):
        def on_save(self, args, state, control, **kwargs):
            failpoint("train:checkpoint")

    return CheckpointFailpoint()


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
