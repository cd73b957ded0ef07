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
