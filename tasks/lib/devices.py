"""Where a stage computes: 'cuda' when torch sees a GPU, else 'cpu'.

The answer is part of the train, evaluate and score keys (bf16, the attention kernel and the
evaluation precision follow from it), so it is asked at planning time, for every run. On Linux,
CUDA (or ROCm, which torch also reports as cuda) needs the driver's device nodes (/dev/nvidiaN,
/dev/kfd, or /dev/dxg under WSL2); without any, the answer is 'cpu' without importing torch,
which would add about 3 s to planning every run, a warm re-run included.
"""

from __future__ import annotations

import glob
import sys

GPU_DEVICE_NODES = ("/dev/nvidia[0-9]*", "/dev/kfd", "/dev/dxg")


def compute_device() -> str:
    """'cuda' or 'cpu'."""
    if sys.platform.startswith("linux") and not any(glob.glob(p) for p in GPU_DEVICE_NODES):
        return "cpu"
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(planned: str | None) -> str:
    """The device this process computes on, which must be the one the plan keyed the call on
    (`planned`, None for a call not made by a plan): a call planned where a GPU was seen must not
    train on a CPU worker and be cached under the GPU's key, nor the reverse.

    >>> check_device(compute_device()) == compute_device()
    True
    """
    here = compute_device()
    if planned is not None and planned != here:
        raise RuntimeError(f"this call was planned (and keyed) for device {planned!r} but this process computes "
                           f"on {here!r}; run the stage where the planner runs, or plan it again here")
    return here
