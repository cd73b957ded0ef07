"""Secrets canary: API keys in the environment reach the one place they belong and nowhere else.

Unique random values go into HF_TOKEN, HUGGING_FACE_HUB_TOKEN, OPENAI_API_KEY and the judge's key
variable; then a whole run (train and evaluate included, the train worker inheriting the
environment) uses the optional LLM judge against a fake OpenAI-compatible server on 127.0.0.1. The
server must receive the judge key in its Authorization header (so the key really was read and
used) and no other canary anywhere; and no canary may appear in any file of the project and
warehouse, the catalog's rows, the flow's return value, the Prefect flow run, task runs, logs and
artifacts, or the process's stdout/stderr. The fake server is careless on purpose: it echoes the
Authorization header back inside its reply text.
"""

from __future__ import annotations

import json
import logging
import secrets
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from sftflow.tasks.core.catalog import connect_readonly

JUDGE_KEY_ENV = "SFTFLOW_TEST_JUDGE_API_KEY"
CANARY_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "OPENAI_API_KEY", JUDGE_KEY_ENV)
JUDGE_MODEL = "judge-model"


class FakeOpenAI(BaseHTTPRequestHandler):
    """GET /v1/models and POST /v1/chat/completions; records every request it receives."""

    def log_message(self, *args):  # not to stderr: capfd is checked
        pass

    def _reply(self, payload: dict) -> None:
        body = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _record(self, body: bytes) -> None:
        self.server.requests.append({"method": self.command, "path": self.path,
                                     "headers": dict(self.headers), "body": body.decode("utf-8", "replace")})

    def do_GET(self):
        self._record(b"")
        self._reply({"object": "list", "data": [{"id": JUDGE_MODEL, "object": "model"}]})

    def do_POST(self):
        self._record(self.rfile.read(int(self.headers["Content-Length"])))
        # careless: the grade comes with the request's Authorization header quoted back
        text = f"8 - graded (request carried {self.headers.get('Authorization')})"
        self._reply({"id": "c", "object": "chat.completion", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})


@pytest.fixture
def judge_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join()


def _console_handlers() -> list[logging.Handler]:
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger()] + [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)]
    return [h for logger in loggers for h in logger.handlers if isinstance(h, PrefectConsoleHandler)]


@pytest.fixture
def console(capfd, monkeypatch):
    """What Prefect prints to the console during the test, as text, besides what capfd captures.

    Prefect's console handler writes to the stream that was sys.stderr when logging was set up:
    in a pytest session often an earlier test's capture, out of capfd's reach. So every message it
    formats is also kept here (Prefect may rebuild its handlers mid-run: the class is patched, not
    an instance). Afterwards, handlers left writing to a capture stream that is closed, or closes
    with this test, are pointed at the real stderr (else the session's last log lines, the test
    server stopping, end in "I/O operation on closed file" tracebacks).
    """
    from prefect.logging.handlers import PrefectConsoleHandler

    lines: list[str] = []
    original = PrefectConsoleHandler.emit

    def emit(self, record):
        lines.append(self.format(record))
        original(self, record)

    monkeypatch.setattr(PrefectConsoleHandler, "emit", emit)
    yield lambda: "\n".join(lines)
    for handler in _console_handlers():
        if handler.stream in (sys.stdout, sys.stderr) or getattr(handler.stream, "closed", False):
            handler.stream = handler.console.file = sys.__stderr__  # not setStream: it flushes the old one


def _files(root: Path) -> list[tuple[str, bytes]]:
    return [(f"file {p.relative_to(root)}", p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file()]


def _catalog_rows(catalog: Path) -> list[tuple[str, str]]:
    """Every table and view of the catalog, its rows rendered as text (read-only connection)."""
    with connect_readonly(catalog) as con:
        names = [r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY 1").fetchall()]
        return [(f"catalog table {name}", repr(con.execute(f'SELECT * FROM "{name}"').fetchall())) for name in names]


def _prefect_records(flow_run_id: str) -> list[tuple[str, str]]:
    """The flow run (with its parameters), its task runs, logs and artifacts, read back from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # logs are shipped in batches: send what is still queued
    by_run = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    with get_client(sync_client=True) as client:
        flow_run = client.read_flow_run(flow_run_id)
        task_runs = client.read_task_runs(flow_run_filter=by_run)
        artifacts = client.read_artifacts(flow_run_filter=by_run)
        logs, page = [], 200
        while True:
            batch = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                     limit=page, offset=len(logs))
            logs += batch
            if len(batch) < page:
                break
    records = [("prefect flow run", flow_run.model_dump_json()),
               ("prefect flow run parameters", json.dumps(flow_run.parameters))]
    records += [(f"prefect task run {t.name}", t.model_dump_json()) for t in task_runs]
    records += [(f"prefect artifact {a.key}", a.model_dump_json()) for a in artifacts]
    records += [(f"prefect log {i}", log.model_dump_json()) for i, log in enumerate(logs)]
    return records


@pytest.mark.slow
def test_secrets_reach_only_the_judge_authorization_header(project, run_pipeline, small_train, judge_server,
                                                          monkeypatch, capfd, console):
    canaries = {var: f"canary-{var.lower().replace('_', '-')}-{secrets.token_hex(16)}" for var in CANARY_VARS}
    for var, value in canaries.items():
        monkeypatch.setenv(var, value)
    port = judge_server.server_address[1]
    overrides = [*small_train, "eval.judge.enabled=true", f"eval.judge.base_url=http://127.0.0.1:{port}/v1",
                 f"eval.judge.model={JUDGE_MODEL}", f"eval.judge.api_key_env={JUDGE_KEY_ENV}",
                 "eval.judge.timeout_seconds=20"]

    summary = run_pipeline(project, overrides, only="all")
    out, err = capfd.readouterr()
    console_text = console()

    # The judge key was read from its variable and sent, as a bearer token, on every request.
    requests = judge_server.requests
    assert [(r["method"], r["path"]) for r in requests[:1]] == [("GET", "/v1/models")]
    chat = [r for r in requests if r["path"] == "/v1/chat/completions"]
    assert len(chat) >= 2 and all(r["method"] == "POST" for r in chat)
    assert all(r["headers"].get("Authorization") == f"Bearer {canaries[JUDGE_KEY_ENV]}" for r in requests)
    assert {e["metric"] for e in summary["evals"]} >= {"judge_score_mean", "judge_score_mean_base"}
    # ... and nothing else the server received carries any canary (the other three were never sent).
    for request in requests:
        headers = {k: v for k, v in request["headers"].items() if k.lower() != "authorization"}
        sent = json.dumps([request["path"], headers, request["body"]])
        assert not [var for var, value in canaries.items() if value in sent], request["path"]

    root = project
    warehouse = root / "data" / "warehouse"
    generations = json.loads(next((warehouse / "artifacts" / "evaluate").glob("*/generations.json")).read_text())
    assert {g["judge_score_tuned"] for g in generations} == {8}  # the replies (key quoted in them) were read

    files = _files(root)
    catalog = _catalog_rows(warehouse / "catalog.duckdb")
    prefect = _prefect_records(summary["flow_run_id"])
    places: list[tuple[str, str | bytes]] = [
        *files, *catalog, *prefect,
        ("flow return value", json.dumps(summary, default=str)),
        ("captured stdout", out), ("captured stderr", err), ("Prefect console log", console_text),
    ]
    # The places are the real ones (a grep of nothing finds nothing).
    names = [name for name, _ in places]
    assert f"file {(warehouse / 'catalog.duckdb').relative_to(root)}" in names
    assert any(name.startswith("file data/warehouse/prefect-results/") for name in names)
    assert any(name.startswith("file data/warehouse/artifacts/train/") and name.endswith("/train.log") for name in names)
    assert any("/checkpoints/checkpoint-" in name and name.endswith("/training_args.bin") for name in names)
    assert any(name.startswith("catalog table evals") for name in names)
    assert any("judge_score_mean" in text for name, text in catalog if name == "catalog table evals")
    assert sum(name.startswith("prefect task run ") for name in names) == len(summary["stages"]) == 12
    assert sum(name.startswith("prefect log ") for name in names) > 20
    assert sum(name.startswith("prefect artifact ") for name in names) >= 12
    prefect_text = dict(prefect)
    assert JUDGE_KEY_ENV in prefect_text["prefect flow run parameters"]  # the variable's name, never its value
    assert "Beginning flow run" in console_text and "[12/12] evaluate" in console_text
    assert out or err  # the fd capture saw the run (progress bars, at least)

    leaks = [f"{var} in {name}" for name, text in places for var, value in canaries.items()
             if (value.encode() if isinstance(text, bytes) else value) in text]
    assert not leaks, f"canaries found in {len(leaks)} place(s):\n" + "\n".join(leaks)
    print(f"checked {len(canaries)} canaries in {len(places)} places: {len(files)} files, {len(catalog)} "
          f"catalog tables/views, {len(prefect)} Prefect records, the return value, stdout, stderr and the console log")
