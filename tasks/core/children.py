"""Child processes that die with their parent.

Training runs in a child (`accelerate launch`), which starts the worker as its own child. If
the flow is killed (SIGKILL, an OOM kill), an orphaned worker would keep training and writing
checkpoints into the work folder that the re-run resumes from: two trainers, one folder. On
Linux, prctl(PR_SET_PDEATHSIG) has the kernel send SIGKILL to a process when its parent dies;
the launcher gets it from the flow (`preexec_fn`), the worker sets it for itself at start.
Elsewhere these calls do nothing and an orphan finishes on its own.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
DIE_WITH_FLOW_ENV = "SFTFLOW_DIE_WITH_FLOW"  # set for the worker by the train stage; unset when run by hand

_prctl = None
if sys.platform.startswith("linux"):
    try:
        # Looked up now, in the parent: the preexec_fn runs between fork and exec, where
        # loading a library is unsafe.
        _prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # a libc without prctl
        _prctl = None


def die_with_parent(parent_pid: int | None = None) -> None:
    """SIGKILL this process when its parent dies (Linux). As Popen's preexec_fn, pass the parent's
    pid (`functools.partial(die_with_parent, os.getpid())`): a parent that died before the call
    would never send the signal, so the child then exits at once."""
    if _prctl is None:
        return
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent_pid is not None and os.getppid() != parent_pid:
        os._exit(1)
