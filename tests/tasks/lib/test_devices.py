import pytest


def test_without_gpu_device_nodes_the_device_is_cpu_and_torch_is_not_asked(monkeypatch):
    from sftflow.tasks.lib import devices

    monkeypatch.setattr(devices.sys, "platform", "linux")
    monkeypatch.setattr(devices.glob, "glob", lambda pattern: [])
    assert devices.compute_device() == "cpu"
    # with a device node present, torch decides (this machine's torch may see no GPU)
    torch = pytest.importorskip("torch")
    monkeypatch.setattr(devices.glob, "glob", lambda pattern: ["/dev/nvidia0"] if "nvidia" in pattern else [])
    assert devices.compute_device() == ("cuda" if torch.cuda.is_available() else "cpu")


def test_a_call_runs_only_on_the_device_its_plan_keyed(monkeypatch):
    """A call planned (and keyed) where a GPU was seen must not compute on a CPU worker, nor the reverse."""
    from sftflow.tasks.lib import devices

    monkeypatch.setattr(devices, "compute_device", lambda: "cpu")
    assert devices.check_device("cpu") == "cpu"
    assert devices.check_device(None) == "cpu"  # a call not made by a plan: this process's device
    with pytest.raises(RuntimeError, match="planned \\(and keyed\\) for device 'cuda' but this process computes on 'cpu'"):
        devices.check_device("cuda")


def test_plans_hand_their_device_to_the_task(tmp_path):
    """The plan's device travels in the call (and in its key), so the task need not probe again."""
    from sftflow.tasks import evaluate, score, train
    from sftflow.tasks.core.artifacts import Manifest
    from sftflow.tasks.core.recipe import Recipe
    from sftflow.tasks.core.workspace import Workspace
    from sftflow.tasks.lib.devices import compute_device

    ws = Workspace(root=tmp_path, warehouse=tmp_path / "warehouse")
    recipe = Recipe.model_validate({"name": "r", "sources": [{"name": "s", "format": "alpaca", "path": "a.jsonl"}]})
    upstream = Manifest.model_construct(stage="mix", key="m", files=[], stats={"data_hash": "d"})
    trained = Manifest.model_construct(stage="train", key="t", files=[], stats={"data_hash": "t"})
    assert train.plan(recipe, upstream, ws, data_card={}).params["device"] == compute_device()
    assert evaluate.plan(recipe, trained, upstream, ws).params["device"] == compute_device()
    scoring = recipe.model_copy(update={"score": recipe.score.model_copy(update={"enabled": True})})
    assert score.plan(scoring, [upstream], ws).params["device"] == compute_device()
