import os

import pytest

from sftflow.tasks.core.workspace import PathNotAllowed, Workspace


@pytest.fixture
def ws(tmp_path):
    (tmp_path / "proj" / "data").mkdir(parents=True)
    (tmp_path / "proj" / "data" / "a.json").write_text("[]")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.json").write_text("[]")
    return Workspace(root=(tmp_path / "proj").resolve(), warehouse=tmp_path / "wh")


def test_relative_path_inside_root(ws):
    assert ws.resolve_input("data/a.json") == ws.root / "data" / "a.json"


@pytest.fixture
def hostile(ws, tmp_path):
    """Links inside the root that lead out of it, and a sibling folder sharing the root's prefix."""
    os.symlink(tmp_path / "outside" / "secret.json", ws.root / "data" / "link.json")
    os.symlink(tmp_path / "outside", ws.root / "data" / "dirlink")
    os.symlink("../../outside/secret.json", ws.root / "data" / "relative_link.json")
    (tmp_path / "proj-evil").mkdir()
    (tmp_path / "proj-evil" / "f.json").write_text("[]")
    return tmp_path


PATH_PAYLOADS = [
    "../outside/secret.json", "data/../../outside/secret.json", "./../outside/secret.json",
    "data/./../../outside/secret.json", "data/a.json/../../../outside/secret.json", "..", "../",
    "../../../../../../../../etc/shadow", "/etc/passwd", "//etc/passwd", "/", "/proc/self/environ", "/tmp",
    "~/x.json", "~root/.ssh/id_rsa", "~", "data/a.json\x00.txt", "\x00", "data/\x00/../a.json",
    "data/link.json", "data/dirlink/secret.json", "data/relative_link.json",
    "{tmp}/outside/secret.json", "{tmp}/proj-evil/f.json", "{tmp}/wh/catalog.duckdb", "{tmp}/proj/../outside/secret.json",
]


@pytest.mark.parametrize("payload", PATH_PAYLOADS)
def test_escapes_are_refused(ws, hostile, payload):
    with pytest.raises(PathNotAllowed):
        ws.resolve_input(payload.format(tmp=hostile))


def test_at_least_twenty_path_payloads():
    assert len(PATH_PAYLOADS) >= 20


def test_symlink_leaving_root_is_refused(ws, tmp_path):
    os.symlink(tmp_path / "outside" / "secret.json", ws.root / "data" / "link2.json")
    with pytest.raises(PathNotAllowed):
        ws.resolve_input("data/link2.json")


def test_links_and_dots_that_stay_inside_are_fine(ws):
    os.symlink(ws.root / "data" / "a.json", ws.root / "data" / "inner.json")
    assert ws.resolve_input("data/inner.json") == ws.root / "data" / "a.json"
    assert ws.resolve_input("./data/../data/a.json") == ws.root / "data" / "a.json"
    assert ws.resolve_input(str(ws.root / "data" / "a.json")) == ws.root / "data" / "a.json"


def test_extra_data_dir_allowed(tmp_path, monkeypatch):
    (tmp_path / "shared").mkdir()
    monkeypatch.setenv("SFTFLOW_DATA_DIRS", str(tmp_path / "shared"))
    ws = Workspace.from_env(root=tmp_path / "proj")
    assert ws.resolve_input(str(tmp_path / "shared" / "f.json")) == (tmp_path / "shared" / "f.json").resolve()
