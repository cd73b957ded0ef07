"""The train stage's base model: where `train.model` is, and its tokenizer.

`train.model` is a local folder (confined to the workspace's allowed roots) or a hub id, as
tasks/core/workspace.py `model_location` decides; errors name the recipe field. The builtin
model is built from the train rows (tasks/lib/tiny_model.py), not located.
"""

from __future__ import annotations

from sftflow.tasks.core.recipe_training import TrainConfig
from sftflow.tasks.core.workspace import Workspace, model_location as locate_model
from sftflow.tasks.lib.tiny_model import BUILTIN_TINY_LLAMA


def model_location(model: str, workspace: Workspace) -> str:
    """A confined local folder (absolute) or a hub id. `builtin:*` is built, not located."""
    if model.startswith("builtin:"):
        raise ValueError(f"train.model {model!r}: the only builtin model is {BUILTIN_TINY_LLAMA}")
    return str(locate_model(model, workspace.resolve_input, "train.model"))


def load_tokenizer(location: str, cfg: TrainConfig):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(location, revision=cfg.revision, trust_remote_code=cfg.trust_remote_code)
