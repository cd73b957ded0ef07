"""Running sftflow as a service: the Prefect server with its UI, and the nightly deployment.

`deployments/prefect.yaml` is the one place the deployment is defined (name, parameters, cron
schedule, work pool). `prefect deploy` reads it for a work pool; `sftflow serve` reads the same
entry and serves it with `flow.serve`, so both set-ups run the same schedule with the same
parameters.
"""

from __future__ import annotations

import importlib.util
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEPLOYMENTS_FILE = Path("deployments") / "prefect.yaml"
LOOPBACK = "127.0.0.1"
DEFAULT_UI_PORT = 4200
# The settings by which a user names Prefect's database, in both spellings Prefect 3 reads (with
# a driver set, Prefect builds the URL from the host, name, user and password settings).
USER_DATABASE_SETTINGS = ("PREFECT_SERVER_DATABASE_CONNECTION_URL", "PREFECT_API_DATABASE_CONNECTION_URL",
                          "PREFECT_SERVER_DATABASE_DRIVER", "PREFECT_API_DATABASE_DRIVER")


@dataclass(frozen=True)
class DeploymentSpec:
    """One entry of deployments/prefect.yaml, as `flow.serve` needs it."""

    name: str
    entrypoint: str
    parameters: dict[str, Any]
    crons: tuple[tuple[str, str], ...]  # (cron expression, timezone) of each active schedule
    work_pool: str
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)


def load_deployments(root: Path) -> list[DeploymentSpec]:
    """The deployments declared in ROOT/deployments/prefect.yaml."""
    path = root / DEPLOYMENTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no {DEPLOYMENTS_FILE} under {root}: run from the project root or pass --root")
    document = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    specs = []
    for entry in document.get("deployments") or []:
        crons = tuple((s["cron"], s.get("timezone", "UTC")) for s in entry.get("schedules") or []
                      if "cron" in s and s.get("active", True))
        specs.append(DeploymentSpec(
            name=entry["name"], entrypoint=entry["entrypoint"], parameters=dict(entry.get("parameters") or {}),
            crons=crons, work_pool=(entry.get("work_pool") or {}).get("name", ""),
            description=" ".join(str(entry.get("description", "")).split()), tags=tuple(entry.get("tags") or ()),
        ))
    if not specs:
        raise ValueError(f"{path} declares no deployments")
    return specs


def find_deployment(root: Path, name: str | None) -> DeploymentSpec:
    specs = load_deployments(root)
    if name is None:
        return specs[0]
    for spec in specs:
        if spec.name == name:
            return spec
    raise ValueError(f"no deployment {name!r} in {root / DEPLOYMENTS_FILE}; known: {[s.name for s in specs]}")


def local_api_url(port: int = DEFAULT_UI_PORT) -> str:
    return f"http://{LOOPBACK}:{port}/api"


def server_is_up(api_url: str, timeout_s: float = 0.5) -> bool:
    """Whether a Prefect server answers its health check at api_url."""
    try:
        with urllib.request.urlopen(f"{api_url.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def running_local_server(port: int = DEFAULT_UI_PORT) -> str | None:
    """The API URL of `sftflow ui` on this machine, when PREFECT_API_URL is unset and it is up.

    Runs then report to the UI a user has open (and skip Prefect's temporary server, whose
    start-up is most of an unchanged re-run's time). A PREFECT_API_URL set by the user wins.
    """
    if os.environ.get("PREFECT_API_URL"):
        return None
    url = local_api_url(port)
    return url if server_is_up(url) else None


class TemporaryServer:
    """Prefect's temporary API server for one `sftflow run`, started before the flow is imported.

    Prefect starts the same server itself (uvicorn serving `prefect.server.api.server:create_app`
    in ephemeral mode) at the flow's first API call, but only after importing that module into
    the flow process (about 6 s here) and only then waiting for the server's own start-up; an
    unchanged re-run spends most of its time there. Prefect has no way to start it without the
    import, so this starts the same command as a child process first, lets it come up while the
    flow process imports the pipeline, and points the run at it. If it does not come up, the run
    falls back to Prefect's own temporary server. Both read their database from the environment
    (`history_database_env`, set before either starts).
    """

    def __init__(self) -> None:
        with socket.socket() as probe:
            probe.bind((LOOPBACK, 0))
            self.port = probe.getsockname()[1]
        self.api_url = local_api_url(self.port)
        self._stderr = tempfile.TemporaryFile()
        prefect_dir = Path(importlib.util.find_spec("prefect").origin).parent  # no import of prefect
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1",
               "PREFECT__SERVER_FINAL": "1", "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "--app-dir", str(prefect_dir.parent), "--factory",
             "prefect.server.api.server:create_app", "--host", LOOPBACK, "--port", str(self.port),
             "--log-level", "error", "--lifespan", "on"],
            env=env, stdout=subprocess.DEVNULL, stderr=self._stderr)

    def wait_ready(self, timeout_s: float) -> bool:
        """Whether the server answers its health check within timeout_s (False if it exited)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.process.poll() is None:
            if server_is_up(self.api_url):
                return True
            time.sleep(0.1)
        return False

    def failure(self) -> str:
        """Why the server is not up, for the fallback's message."""
        code = self.process.poll()
        self._stderr.seek(0)
        tail = self._stderr.read()[-1000:].decode("utf-8", "replace").strip()
        state = f"exited with code {code}" if code is not None else "did not answer in time"
        return f"{state}{': ' + tail if tail else ''}"

    def stop(self) -> None:
        if self._stderr.closed:  # stopped already
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self._stderr.close()


def ephemeral_startup_timeout_s() -> float:
    """How long a run waits for its temporary server: Prefect's setting when the user set it, else
    120 s (Prefect's 20 s default is too short for a first start that creates the database on a
    small machine)."""
    return float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 120)


def history_database_env(warehouse: Path) -> dict[str, str]:
    """The environment that gives a Prefect server this warehouse's run history: its SQLite
    database in WAREHOUSE/prefect/ (the folder is created), or nothing where the user's
    environment names a database (then Prefect's own setting stands).

    Every server that records a run of the warehouse uses it: `sftflow ui`, and a run's temporary
    server (or Prefect's own, its fallback), so `sftflow ui` shows runs made while it was down.
    Keeping the database beside the catalog keeps everything about the project's runs in one
    folder.
    """
    if any(os.environ.get(name) for name in USER_DATABASE_SETTINGS):
        return {}
    folder = warehouse / "prefect"
    folder.mkdir(parents=True, exist_ok=True)
    return {"PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{folder / 'prefect.db'}"}


def ui_server_command(port: int, warehouse: Path) -> tuple[list[str], dict[str, str]]:
    """`prefect server start` on loopback, with the warehouse's run history as its database."""
    env = {**os.environ, **history_database_env(warehouse)}
    env["PREFECT_UI_API_URL"] = local_api_url(port)
    env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    command = [sys.executable, "-m", "prefect", "server", "start", "--host", LOOPBACK, "--port", str(port)]
    return command, env


def serve(root: Path, name: str | None, api_url: str) -> None:
    """Serve one deployment of prefect.yaml from this process (its schedule, its parameters)."""
    from prefect.schedules import Cron
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from sftflow.flows.pipeline import sftflow_pipeline

    spec = find_deployment(root, name)
    expected = "flows/pipeline.py:sftflow_pipeline"
    if spec.entrypoint != expected:
        raise ValueError(f"deployment {spec.name!r} names entrypoint {spec.entrypoint!r}; serve runs {expected}")
    parameters = dict(spec.parameters)
    parameters.setdefault("root", str(root))
    # The runner starts each flow run in a child process: the environment, not only this
    # process's settings context, must point at the server.
    os.environ["PREFECT_API_URL"] = api_url
    with temporary_settings({PREFECT_API_URL: api_url}):
        sftflow_pipeline.serve(
            name=spec.name,
            schedules=[Cron(cron, timezone=tz) for cron, tz in spec.crons],
            parameters=parameters,
            description=spec.description,
            tags=list(spec.tags),
        )
