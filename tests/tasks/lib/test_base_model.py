"""Where the train stage's base model is: confined local folders, hub ids, no other builtin."""

from __future__ import annotations

import pytest

from sftflow.tasks.core.workspace import PathNotAllowed, Workspace
from sftflow.tasks.lib.base_model import model_location


def test_local_model_paths_are_confined_and_hub_ids_pass_through(tmp_path):
    (tmp_path / "models" / "mine").mkdir(parents=True)
    workspace = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    assert model_location("models/mine", workspace) == str(tmp_path / "models" / "mine")
    assert model_location("HuggingFaceTB/SmolLM2-135M", workspace) == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(PathNotAllowed, match="outside the allowed roots"):
        model_location("../elsewhere", workspace)
    with pytest.raises(ValueError, match="only builtin model is builtin:tiny-llama"):
        model_location("builtin:gpt", workspace)
    with pytest.raises(FileNotFoundError, match=r"^train\.model './models/missing': local folder"):
        model_location("./models/missing", workspace)  # the error names the recipe field it came from
