"""training.png: the training curves of one run, from the trainer's log history."""

from __future__ import annotations

from pathlib import Path
from typing import Any


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
