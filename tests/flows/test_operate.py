"""The deployment definition and the ui/serve helpers (the live server is in test_ui_e2e.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from sftflow.flows import operate
from sftflow.flows.cli import app
from sftflow.flows.publish import stage_artifact_key

REPO = Path(__file__).resolve().parents[2]


def test_prefect_yaml_declares_the_nightly_deployment():
    (spec,) = operate.load_deployments(REPO)
    assert spec.name == "nightly-demo"
    assert spec.entrypoint == "flows/pipeline.py:sftflow_pipeline"
    assert spec.crons == (("0 2 * * *", "UTC"),)
    assert spec.work_pool == "sftflow-process"
    assert spec.parameters == {"recipe_path": "deployments/recipes/demo.yaml", "overrides": [], "only": "all"}
    # the parameters are the flow's own
    import inspect

    from sftflow.flows.pipeline import sftflow_pipeline
    assert set(spec.parameters) <= set(inspect.signature(sftflow_pipeline.fn).parameters)
    assert (REPO / spec.parameters["recipe_path"]).is_file()


def test_unknown_deployment_and_missing_file_are_named(tmp_path):
    with pytest.raises(ValueError, match="no deployment 'weekly'.*nightly-demo"):
        operate.find_deployment(REPO, "weekly")
    with pytest.raises(FileNotFoundError, match="deployments/prefect.yaml"):
        operate.load_deployments(tmp_path)


def test_ui_server_is_loopback_with_sqlite_in_the_warehouse(tmp_path, monkeypatch):
    for name in operate.USER_DATABASE_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    command, env = operate.ui_server_command(4321, tmp_path / "wh")
    assert command[-4:] == ["--host", "127.0.0.1", "--port", "4321"]
    assert env["PREFECT_SERVER_DATABASE_CONNECTION_URL"] == f"sqlite+aiosqlite:///{tmp_path / 'wh' / 'prefect' / 'prefect.db'}"
    assert (tmp_path / "wh" / "prefect").is_dir()  # SQLite creates the file, not its folder
    assert env["PREFECT_UI_API_URL"] == "http://127.0.0.1:4321/api"
    monkeypatch.setenv("PREFECT_SERVER_DATABASE_CONNECTION_URL", "postgresql+asyncpg://db/prefect")
    assert operate.ui_server_command(4321, tmp_path)[1]["PREFECT_SERVER_DATABASE_CONNECTION_URL"].startswith("postgresql")


@pytest.mark.parametrize("name", operate.USER_DATABASE_SETTINGS)
def test_a_database_the_user_names_wins_over_the_warehouse(tmp_path, monkeypatch, name):
    """Prefect reads the database from either spelling of its URL setting, or builds it from its
    parts when a driver is set: any of them leaves Prefect's setting alone."""
    for other in operate.USER_DATABASE_SETTINGS:
        monkeypatch.delenv(other, raising=False)
    assert operate.history_database_env(tmp_path / "wh") == {
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp_path / 'wh' / 'prefect' / 'prefect.db'}"}
    monkeypatch.setenv(name, "postgresql+asyncpg")
    assert operate.history_database_env(tmp_path / "other") == {}
    assert not (tmp_path / "other").exists()
    env = operate.ui_server_command(4321, tmp_path / "other")[1]
    assert env[name] == "postgresql+asyncpg"
    assert "PREFECT_SERVER_DATABASE_CONNECTION_URL" not in env or name == "PREFECT_SERVER_DATABASE_CONNECTION_URL"


def test_a_set_api_url_wins_over_the_local_server(monkeypatch):
    monkeypatch.setenv("PREFECT_API_URL", "http://prefect.example:4200/api")
    assert operate.running_local_server() is None
    monkeypatch.delenv("PREFECT_API_URL")
    free = operate.running_local_server(port=1)  # nothing listens on port 1
    assert free is None


def test_serve_without_a_server_says_how_to_start_one():
    result = CliRunner().invoke(app, ["serve", "--api-url", "http://127.0.0.1:1/api"])
    assert result.exit_code == 2
    assert "sftflow ui" in result.output


def test_stage_artifact_keys_use_prefects_alphabet():
    assert stage_artifact_key("normalize", "My Source_2") == "sftflow-normalize-my-source-2"
    assert stage_artifact_key("mix", None) == "sftflow-mix"


def test_a_temporary_server_that_dies_is_reported_and_stopped():
    server = operate.TemporaryServer()
    server.process.kill()
    assert server.wait_ready(5) is False
    assert server.failure().startswith("exited with code")
    server.stop()
    server.stop()  # a second stop (the exit hook) is harmless
    assert server.process.poll() is not None


def test_run_without_a_server_uses_the_early_temporary_server(tmp_path):
    """A first `sftflow run` on a machine with no Prefect server and a fresh Prefect home: the
    temporary server started before the pipeline's imports serves the run (Prefect starts none of
    its own), its first start (database creation) is not cut short, and it is gone at exit."""
    import os
    import subprocess
    import sys

    root = tmp_path / "project"
    (root / "data").mkdir(parents=True)
    (root / "data" / "rows.jsonl").write_text(
        '{"messages": [{"role": "user", "content": "Name a prime number."}, '
        '{"role": "assistant", "content": "Seven is a prime number: its only divisors are one and seven."}]}\n',
        encoding="utf-8")
    (root / "recipe.yaml").write_text(
        "name: tiny\nsources:\n  - {name: rows, path: data/rows.jsonl, format: openai, category: qa}\n"
        "score: {enabled: false}\nmix: {eval_fraction: 0.0}\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    done = subprocess.run([sys.executable, "-m", "sftflow.flows.cli", "run", "recipe.yaml", "--only", "data"], cwd=root,
                          env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Finished in state Completed" in output
    assert "Starting temporary server" not in output  # Prefect's own was not needed
    port = int(output.split("View at http://127.0.0.1:")[1].split("/")[0])
    assert not operate.server_is_up(operate.local_api_url(port))  # stopped with the run
    # the run is recorded in the warehouse's database, the one `sftflow ui` serves
    assert _flow_runs(root / "data" / "warehouse" / "prefect" / "prefect.db") == [("sftflow", "Completed")]
    assert not (tmp_path / "prefect-home" / "prefect.db").exists()


def _flow_runs(database: Path) -> list[tuple[str, str]]:
    """(flow name, state) of each flow run a Prefect SQLite database holds."""
    import sqlite3

    with sqlite3.connect(database) as con:
        return con.execute("SELECT flow.name, flow_run.state_name FROM flow_run "
                           "JOIN flow ON flow.id = flow_run.flow_id ORDER BY flow_run.created").fetchall()


def test_prefects_own_temporary_server_uses_the_warehouse_database_too(tmp_path):
    """When the early server does not come up, Prefect's own temporary server serves the run: it
    reads the same setting, so the run still lands in the warehouse's database."""
    import os
    import subprocess
    import sys

    warehouse = tmp_path / "warehouse"
    script = f"""
import os
from pathlib import Path
from sftflow.flows.operate import TemporaryServer, history_database_env

os.environ.update(history_database_env(Path({str(warehouse)!r})))  # as `sftflow run` does
server = TemporaryServer()
server.process.kill()  # the early server fails

from prefect import flow
from sftflow.flows.cli import _reporting_to

@flow(name="fallback-check")
def check():
    return 1

with _reporting_to(server):
    check()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false",
               PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS=str(int(operate.ephemeral_startup_timeout_s())))
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Prefect starts its own temporary server instead" in " ".join(output.split())  # (wrapped)
    assert "Starting temporary server" in output  # Prefect's own
    assert _flow_runs(warehouse / "prefect" / "prefect.db") == [("fallback-check", "Completed")]
    assert not (tmp_path / "prefect-home" / "prefect.db").exists()


def test_threads_without_the_runs_context_report_to_the_early_server(tmp_path):
    """With `runner: processes`, Prefect relays the part workers' events and logs from threads
    that carry no settings context: they read Prefect's process-wide settings, which were loaded
    at import, before the early server's URL was set. Those must name the early server too, or
    each such thread starts a second temporary server (and the part tasks' events land there)."""
    import os
    import subprocess
    import sys

    script = """
import threading
from prefect.settings import get_current_settings  # loaded first, as the pipeline's import does
from sftflow.flows.cli import _reporting_to
from sftflow.flows.operate import TemporaryServer

server = TemporaryServer()
try:
    with _reporting_to(server):
        seen = []
        thread = threading.Thread(target=lambda: seen.append(get_current_settings().api.url))
        thread.start()
        thread.join()
        print("in run:", seen[0] == server.api_url, seen[0])
    seen = []
    thread = threading.Thread(target=lambda: seen.append(get_current_settings().api.url))
    thread.start()
    thread.join()
    print("after run:", seen[0])
finally:
    server.stop()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(tmp_path / "prefect-home"), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "in run: True" in done.stdout, done.stdout
    assert "after run: None" in done.stdout, done.stdout  # the process-wide settings are restored
