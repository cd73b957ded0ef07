import os
import signal
import subprocess
import sys
import time

import pytest

from sftflow.tasks.core.locks import LOCK_WAIT_ENV, WorkspaceBusy, lock_wait_seconds, workspace_lock

HOLD = """
import sys, time
from pathlib import Path
from sftflow.tasks.core.locks import workspace_lock
with workspace_lock(Path(sys.argv[1]), recipe="nightly"):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(warehouse, seconds):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(warehouse), str(seconds)], stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_second_run_is_refused_with_the_holder_named(tmp_path):
    holder = _holder(tmp_path, 60)
    try:
        with pytest.raises(WorkspaceBusy) as refused:
            with workspace_lock(tmp_path, recipe="mine"):
                pytest.fail("two holders")
        message = str(refused.value)
        assert f"pid {holder.pid}" in message and "recipe nightly" in message
        assert "--wait-seconds" in message and "--warehouse" in message
    finally:
        holder.kill()
        holder.wait()


def test_a_waiting_run_gets_the_lock_when_the_holder_finishes(tmp_path):
    holder = _holder(tmp_path, 1.5)
    started = time.monotonic()
    with workspace_lock(tmp_path, wait_seconds=30):
        waited = time.monotonic() - started
    holder.wait(timeout=30)
    assert 0.5 < waited < 30


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    holder = _holder(tmp_path, 60)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    with workspace_lock(tmp_path):  # the kernel released it with the process
        pass


def test_the_same_process_cannot_take_it_twice(tmp_path):
    with workspace_lock(tmp_path):
        with pytest.raises(WorkspaceBusy):
            with workspace_lock(tmp_path):
                pass


def test_wait_seconds_from_the_environment(monkeypatch):
    monkeypatch.delenv(LOCK_WAIT_ENV, raising=False)
    assert lock_wait_seconds() == 0
    monkeypatch.setenv(LOCK_WAIT_ENV, "12.5")
    assert lock_wait_seconds() == 12.5
    monkeypatch.setenv(LOCK_WAIT_ENV, "soon")
    with pytest.raises(ValueError, match=LOCK_WAIT_ENV):
        lock_wait_seconds()
