import os

import pytest

from tasks.core.workspace import PathNotAllowed, Workspace


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "proj" / "data").mkdir(parents=True)
    (tmp_path / "proj" / "data" / "a.json").write_text("[]")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.json").write_text("[]")
    return Workspace(root=(tmp_path / "proj").resolve(), warehouse=tmp_path / "wh")


def test_relative_path_inside_root(ws):
    assert ws.resolve_input("data/a.json") == ws.root / "data" / "a.json"


@pytest.mark.parametrize("payload", ["../outside/secret.json", "/etc/passwd", "~/x.json",
                                     "data/../../outside/secret.json", "data/a.json\x00.txt"])
def test_escapes_are_refused(ws, payload):
    with pytest.raises(PathNotAllowed):
        ws.resolve_input(payload)


def test_symlink_leaving_root_is_refused(ws, tmp_path):
    os.symlink(tmp_path / "outside" / "secret.json", ws.root / "data" / "link.json")
    with pytest.raises(PathNotAllowed):
        ws.resolve_input("data/link.json")


def test_extra_data_dir_allowed(tmp_path, monkeypatch):
    (tmp_path / "shared").mkdir()
    monkeypatch.setenv("SFTFLOW_DATA_DIRS", str(tmp_path / "shared"))
    ws = Workspace.from_env(root=tmp_path / "proj")
    assert ws.resolve_input(str(tmp_path / "shared" / "f.json")) == (tmp_path / "shared" / "f.json").resolve()
