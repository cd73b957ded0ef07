"""One pipeline per warehouse at a time: an advisory file lock, and who holds it.

Two runs writing one warehouse would race on the catalog's working database and on the
training work folders. The flow takes `sftflow.lock` in the warehouse for its whole run with
flock(2): the kernel releases it when the holder dies, even by SIGKILL, so a crashed run never
leaves a stale lock behind. A second run either waits (SFTFLOW_LOCK_WAIT_SECONDS, or
`sftflow run --wait-seconds`) or stops at once with WorkspaceBusy naming the holder. The holder
writes its pid, host, recipe and start time into the file, for that message only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Iterator

LOCK_FILE = "sftflow.lock"
LOCK_WAIT_ENV = "SFTFLOW_LOCK_WAIT_SECONDS"
POLL_SECONDS = 0.5


class WorkspaceBusy(RuntimeError):
    """Another sftflow run holds the warehouse."""


def lock_wait_seconds() -> float:
    """How long a run waits for a busy warehouse: SFTFLOW_LOCK_WAIT_SECONDS, default 0 (fail at once)."""
    raw = os.environ.get(LOCK_WAIT_ENV, "").strip()
    try:
        return max(0.0, float(raw)) if raw else 0.0
    except ValueError:
        raise ValueError(f"{LOCK_WAIT_ENV}={raw!r} is not a number of seconds") from None


@contextlib.contextmanager
def workspace_lock(warehouse: Path, wait_seconds: float = 0.0, **about: Any) -> Iterator[None]:
    """Hold the warehouse's lock for the block; `about` (e.g. recipe=...) describes the holder."""
    warehouse.mkdir(parents=True, exist_ok=True)
    path = warehouse / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, wait_seconds)
        holder = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started_at": datetime.now(UTC).isoformat(timespec="seconds"), **about}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(holder, sort_keys=True).encode("utf-8"), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, wait_seconds: float) -> None:
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise WorkspaceBusy(_busy_message(path, wait_seconds)) from None
            time.sleep(POLL_SECONDS)


def _busy_message(path: Path, wait_seconds: float) -> str:
    try:
        holder = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        holder = {}
    who = ", ".join(f"{k} {holder[k]}" for k in ("pid", "host", "recipe", "run_id", "started_at") if k in holder)
    waited = f" after waiting {wait_seconds:g} s" if wait_seconds else ""
    return (
        f"the warehouse {path.parent} is in use by another sftflow run ({who or 'holder unknown'}){waited}. "
        f"Wait for it to finish, let this run queue with `sftflow run --wait-seconds N` "
        f"(or {LOCK_WAIT_ENV}=N), or give this run its own warehouse with --warehouse"
    )
