"""Failpoints: named places where a crash test kills the pipeline, deterministically.

Crash safety is only believable when a crash is tried at every dangerous moment, and a timer
racing a millisecond-long stage cannot hit them reliably. The writing code therefore calls
`failpoint("<stage>:<moment>")` at each moment that matters; when the environment variable
SFTFLOW_FAILPOINT names that failpoint, the process group gets SIGKILL there: the flow, its
task threads and any training child die at once, as in a power cut or an OOM kill of the
container. Unset (always, outside crash tests), a failpoint is one dictionary lookup.

Moments, in the order a stage reaches them (see tasks/core/stage.py, tasks/core/catalog.py):
- `<stage>:computed`   the stage's rows are in memory, nothing written
- `<stage>:written`    Parquet parts are in the temporary folder, no manifest yet
- `<stage>:committed`  the artifact folder is in place, the catalog knows nothing of it
- `<stage>:recording`  the catalog rows are inserted, the transaction is not committed
- `train:checkpoint`   the training worker has just saved its first complete checkpoint
"""

from __future__ import annotations

import os
import signal

FAILPOINT_ENV = "SFTFLOW_FAILPOINT"
MOMENTS = ("computed", "written", "committed", "recording")


def failpoint(name: str) -> None:
    """Kill this process group with SIGKILL when SFTFLOW_FAILPOINT equals `name`."""
    if os.environ.get(FAILPOINT_ENV) != name:
        return
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    finally:  # not reached; without process groups (or if killpg is refused) die alone
        os.kill(os.getpid(), signal.SIGKILL)
