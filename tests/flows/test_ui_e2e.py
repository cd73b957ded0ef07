"""End to end as a team runs it: a real Prefect server on loopback (`sftflow ui`), the deployment
from deployments/prefect.yaml on a process work pool, a run triggered with recipe parameters and
picked up by a worker, and the UI in headless Chromium showing the run and its artifacts. Also a
`sftflow run` made while no server was up, shown by the `sftflow ui` started after it.

Screenshots land in build/ui-e2e/. Needs Debian's chromium (`make test` installs it).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sftflow.flows.operate import local_api_url, server_is_up
from sftflow.flows.publish import ARTIFACT_KEYS

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
SCREENSHOTS = REPO / "build" / "ui-e2e"
# Chromium as root in a closed network: no sandbox, no background connections (they are refused).
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update"]

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(command: list[str], env: dict[str, str], timeout_s: float = 120, cwd: Path = REPO) -> str:
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, f"{command} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def _env_without_a_server(home: Path) -> dict[str, str]:
    """This environment less every Prefect setting, with its own PREFECT_HOME."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    return env


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """`sftflow ui` on a free loopback port, with its own PREFECT_HOME and SQLite database."""
    home = tmp_path_factory.mktemp("prefect-home")
    with _ui_server(home, home / "warehouse") as started:
        yield started


@contextlib.contextmanager
def _ui_server(home: Path, warehouse: Path):
    """`sftflow ui --warehouse WAREHOUSE` on a free loopback port, up; its log is HOME/server.log."""
    port = _free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    env = {**_env_without_a_server(home), "PREFECT_API_URL": api_url}
    log = open(home / "server.log", "w")
    process = subprocess.Popen([sys.executable, "-m", "sftflow.flows.cli", "ui", "--port", str(port),
                                "--warehouse", str(warehouse)], cwd=REPO, env=env, stdout=log,
                               stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not server_is_up(api_url):
            assert process.poll() is None, (home / "server.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "Prefect server did not answer within 120 s"
            time.sleep(0.5)
        yield {"api_url": api_url, "ui_url": f"http://127.0.0.1:{port}", "env": env, "warehouse": warehouse}
    finally:
        _stop(process)
        log.close()


def _client(api_url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class Client:
        def __enter__(self):
            self._settings = temporary_settings({PREFECT_API_URL: api_url})
            self._settings.__enter__()
            self._client = get_client(sync_client=True)
            return self._client.__enter__()

        def __exit__(self, *exc):
            self._client.__exit__(*exc)
            self._settings.__exit__(*exc)

    return Client()


def test_deploy_trigger_and_see_it_in_the_ui(server, project, small_train):
    assert CHROMIUM.is_file(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterId
    from prefect.exceptions import ObjectNotFound

    env = server["env"]
    # the database `sftflow ui` uses lives in its warehouse
    assert (server["warehouse"] / "prefect" / "prefect.db").is_file()
    prefect = [sys.executable, "-m", "prefect"]
    _run(prefect + ["work-pool", "create", "sftflow-process", "--type", "process"], env)
    _run(prefect + ["--no-prompt", "deploy", "--all", "--prefect-file", "deployments/prefect.yaml"], env)

    with _client(server["api_url"]) as client:
        deployment = client.read_deployment_by_name("sftflow/nightly-demo")
        assert deployment.work_pool_name == "sftflow-process"
        assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
        assert deployment.parameters["recipe_path"] == "deployments/recipes/demo.yaml"
        # the scheduler really creates the nightly runs (needs sqlalchemy<2.1 with Prefect 3.8)
        deadline = time.monotonic() + 60
        while True:
            scheduled = client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[deployment.id])))
            if scheduled or time.monotonic() > deadline:
                break
            time.sleep(1)
        assert scheduled and all(r.state.name == "Scheduled" for r in scheduled)
        assert {(r.expected_start_time.hour, r.expected_start_time.minute) for r in scheduled} == {(2, 0)}
        # Pause the schedule and drop its runs, so the worker below can only pick up the run this
        # test triggers (even when the test happens to run just before 02:00 UTC).
        # (Pausing removes a deployment's scheduled runs itself; whatever is left is deleted.)
        client.pause_deployment(deployment.id)
        for run in scheduled:
            try:
                client.delete_flow_run(run.id)
            except ObjectNotFound:
                pass
        assert not client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))

    # trigger a run the way the UI's "Custom run" does: recipe path and --set-style overrides
    out = _run(prefect + ["deployment", "run", "sftflow/nightly-demo", "--params", json.dumps(
        {"overrides": small_train, "root": str(project), "warehouse": str(project / "data" / "warehouse")})], env)
    flow_run_id = next(line.split()[-1] for line in out.splitlines() if "UUID" in line)
    _run(prefect + ["worker", "start", "--pool", "sftflow-process", "--run-once"], env, timeout_s=600)

    with _client(server["api_url"]) as client:
        flow_run = client.read_flow_run(flow_run_id)
        assert flow_run.state.is_completed(), flow_run.state
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    by_key = {a.key: a for a in artifacts}
    expected = set(ARTIFACT_KEYS.values()) | {"sftflow-ingest-alpaca-sample", "sftflow-dedup", "sftflow-train"}
    assert expected <= set(by_key), sorted(by_key)
    assert by_key[ARTIFACT_KEYS["loss_plot"]].type == "image"
    assert "## Realized mixture" in by_key[ARTIFACT_KEYS["run"]].data

    # the run really wrote the catalog it claims to have written
    from sftflow.tasks.core.catalog import connect_readonly
    with connect_readonly(project / "data" / "warehouse" / "catalog.duckdb") as con:
        (status,) = con.execute("SELECT status FROM runs WHERE flow_run_id = ?", [flow_run_id]).fetchone()
    assert status == "completed"

    _check_ui(server["ui_url"], flow_run.name, flow_run_id, by_key)
    _check_serve(server, project)


@contextlib.contextmanager
def _ui_page(height: int):
    """A page of headless Chromium (Debian's), 1400 px wide, that waits up to 60 s for what it expects."""
    from playwright.sync_api import sync_playwright

    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": height})
            page.set_default_timeout(60_000)
            yield page
        finally:
            browser.close()


def _check_ui(ui_url: str, run_name: str, flow_run_id: str, by_key: dict) -> None:
    from playwright.sync_api import expect

    with _ui_page(height=2400) as page:
        page.goto(f"{ui_url}/runs/flow-run/{flow_run_id}")
        expect(page.get_by_text(run_name).first).to_be_visible()
        expect(page.get_by_text("Completed").first).to_be_visible()
        expect(page.get_by_text("nightly-demo").first).to_be_visible()
        page.get_by_text("Artifacts", exact=True).first.click()
        for key in ("sftflow-data-card", "sftflow-run", "sftflow-loss-plot", "sftflow-eval-report",
                    "sftflow-mask-audit", "sftflow-model-card", "sftflow-dedup"):
            expect(page.get_by_text(key, exact=True).first).to_be_visible()
        page.screenshot(path=str(SCREENSHOTS / "flow-run-artifacts.png"), full_page=True)

        # the loss plot renders as an image, the run page links the cards
        page.goto(f"{ui_url}/artifacts/artifact/{by_key['sftflow-loss-plot'].id}")
        image = page.locator("img[src^='data:image/png']").first
        expect(image).to_be_visible()
        assert image.evaluate("img => img.naturalWidth") > 100
        page.screenshot(path=str(SCREENSHOTS / "loss-plot.png"), full_page=True)
        page.goto(f"{ui_url}/artifacts/artifact/{by_key['sftflow-run'].id}")
        expect(page.get_by_text("Realized mixture").first).to_be_visible()
        link = page.get_by_role("link", name="Data card")
        expect(link).to_be_visible()
        assert link.get_attribute("href") == "/artifacts/key/sftflow-data-card"
        page.goto(f"{ui_url}/artifacts/artifact/{by_key['sftflow-data-card'].id}")
        expect(page.get_by_text("Drops by reason").first).to_be_visible()
        expect(page.get_by_text("exact_duplicate").first).to_be_visible()
        page.screenshot(path=str(SCREENSHOTS / "data-card.png"), full_page=True)


def _check_serve(server: dict, project: Path) -> None:
    """`sftflow serve` registers the same deployment with the same schedule and parameters."""
    log_path = SCREENSHOTS / "serve.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "sftflow.flows.cli", "serve", "--root", str(REPO)],
                                   cwd=REPO, env=server["env"], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 90
        while True:
            with _client(server["api_url"]) as client:
                deployment = client.read_deployment_by_name("sftflow/nightly-demo")
            if deployment.work_pool_name is None:  # now served by the process, not the pool
                break
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, "sftflow serve did not register its deployment in 90 s"
            time.sleep(1)
        assert [s.schedule.cron for s in deployment.schedules] == ["0 2 * * *"]
        assert deployment.parameters["recipe_path"] == "deployments/recipes/demo.yaml"
        assert deployment.parameters["only"] == "all"
    finally:
        _stop(process)


def test_a_run_made_without_the_ui_shows_in_it_later(project, tmp_path):
    """`sftflow run` while no Prefect server is up records the run in the warehouse's database
    (through its temporary server), so the `sftflow ui` started afterwards shows it, completed,
    with its artifacts: one run history per warehouse, however the run was started."""
    assert CHROMIUM.is_file(), "Debian's chromium is missing: `make test` installs it (apt-get install chromium)"
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    if server_is_up(local_api_url()):
        pytest.skip("a Prefect server answers on port 4200: `sftflow run` would report to it")
    home = tmp_path / "prefect-home"
    home.mkdir()
    warehouse = project / "data" / "warehouse"
    # cheap: the data stages only, without the embedding model's scoring
    out = _run([sys.executable, "-m", "sftflow.flows.cli", "run", "deployments/recipes/demo.yaml", "--only", "data",
                "--root", str(project), "--set", "score.enabled=false"], _env_without_a_server(home),
               timeout_s=300, cwd=project)
    assert "reporting to the Prefect server" not in out  # no server was up: a temporary one served it
    assert (warehouse / "prefect" / "prefect.db").is_file()

    with _ui_server(home, warehouse) as started, _client(started["api_url"]) as client:
        flow_runs = client.read_flow_runs()
        assert len(flow_runs) == 1, f"the UI's database holds {len(flow_runs)} flow runs, not the one made"
        (flow_run,) = flow_runs
        assert flow_run.state.is_completed(), flow_run.state
        artifacts = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run.id])))
        by_key = {a.key: a for a in artifacts}
        assert {"sftflow-run", "sftflow-data-card", "sftflow-ingest-alpaca-sample", "sftflow-dedup",
                "sftflow-mix"} <= set(by_key), sorted(by_key, key=str)

        # the same run the catalog recorded
        from sftflow.tasks.core.catalog import connect_readonly
        with connect_readonly(warehouse / "catalog.duckdb") as con:
            assert con.execute("SELECT flow_run_id, status FROM runs").fetchall() == [(str(flow_run.id), "completed")]

        from playwright.sync_api import expect

        with _ui_page(height=1600) as page:
            page.goto(f"{started['ui_url']}/runs/flow-run/{flow_run.id}")
            expect(page.get_by_text(flow_run.name).first).to_be_visible()
            expect(page.get_by_text("Completed").first).to_be_visible()
            page.get_by_text("Artifacts", exact=True).first.click()
            for key in ("sftflow-run", "sftflow-data-card", "sftflow-dedup"):
                expect(page.get_by_text(key, exact=True).first).to_be_visible()
            page.screenshot(path=str(SCREENSHOTS / "run-made-without-the-ui.png"), full_page=True)
