"""Launching the training process and relaying its output.

The train stage runs `accelerate launch -m sftflow.tasks.lib.train_worker JOB.json` (`--cpu` without
CUDA) as a child process: an OOM kill or a CUDA crash fails the task with the tail of the
training log (`TrainingFailed`), never the flow process, and `train.num_processes` GPUs work the
same way. Every line of the process goes to `train.log`; only its `[train] ...` lines (one per
logging step: loss, grad norm, lr, tokens/s, conversations and tokens per step) are echoed, or,
on a terminal, a single progress bar follows them.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections import deque
from pathlib import Path

from sftflow.tasks.core.children import DIE_WITH_FLOW_ENV, die_with_parent

LOG_TAIL_LINES = 60
ECHOED_PREFIX = "[train] "  # the worker's own lines (tasks/lib/train_callbacks.py step_line, the resume notice)


class TrainingFailed(RuntimeError):
    """The training process exited with an error; the message carries the tail of its log."""


def launch_command(job_path: Path, num_processes: int, use_cpu: bool, config_file: Path | None = None) -> list[str]:
    """`accelerate launch` through this interpreter (no reliance on PATH).

    With `config_file` (train.accelerate_config) the launch is the file's: processes, machines,
    machine rank, FSDP/DeepSpeed. Without it, one machine, `num_processes` processes, and no
    mixed precision from accelerate (SFTConfig's bf16 decides it)."""
    launcher = [sys.executable, "-m", "accelerate.commands.launch"]
    if config_file is not None:
        return [*launcher, "--config_file", str(config_file), "-m", "sftflow.tasks.lib.train_worker", str(job_path)]
    command = [*launcher, "--num_processes", str(num_processes),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    if use_cpu:  # explicit thread count: accelerate otherwise warns that it picked one
        threads = max(1, (os.cpu_count() or 1) // num_processes)
        command += ["--cpu", "--num_cpu_threads_per_process", str(threads)]
    return [*command, "-m", "sftflow.tasks.lib.train_worker", str(job_path)]


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
