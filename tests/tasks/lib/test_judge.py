"""The optional LLM judge against a tiny OpenAI-compatible server on 127.0.0.1."""

from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from sftflow.tasks.core.recipe_training import JudgeConfig
from sftflow.tasks.lib.judge import JudgeError, check_judge_reachable, judge_generations, parse_score

SECRET = "sk-test-SECRET-0123456789"
ITEMS = [
    {"prompt": "What is 2+2?", "response": "4", "id": "a"},
    {"prompt": "Name a colour.", "response": "Blue.", "id": "b"},
    {"prompt": "Say hi.", "response": "...", "id": "c"},
]


class FakeOpenAI(BaseHTTPRequestHandler):
    """Answers /v1/models and /v1/chat/completions; the reply text comes from server.replies."""

    def log_message(self, *args):  # keep test output quiet
        pass

    def _send(self, status: int, payload) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self.server.requests.append(("GET", self.path, dict(self.headers), None))
        if self.server.status != 200:
            # a careless server that echoes the Authorization header back in its error body
            self._send(self.server.status, f"denied for {self.headers.get('Authorization')}".encode())
        elif self.path == "/v1/models":
            self._send(200, {"object": "list", "data": [{"id": "judge-model", "object": "model"}]})
        else:
            self._send(404, {"error": "not found"})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append(("POST", self.path, dict(self.headers), body))
        if self.server.status != 200:
            self._send(self.server.status, f"denied for {self.headers.get('Authorization')}".encode())
            return
        text = self.server.replies[(len(self.server.requests) - 1) % len(self.server.replies)]
        self._send(200, {"id": "x", "object": "chat.completion",
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                                      "finish_reason": "stop"}]})


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeOpenAI)
    httpd.requests, httpd.replies, httpd.status = [], ["8"], 200
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def config(server, **overrides) -> JudgeConfig:
    values = {"enabled": True, "base_url": f"http://127.0.0.1:{server.server_address[1]}/v1/", "model": "judge-model",
              "api_key_env": "SFTFLOW_TEST_JUDGE_KEY", "timeout_seconds": 5}
    return JudgeConfig(**{**values, **overrides})


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_scores_are_parsed_and_the_key_stays_in_the_header(server, monkeypatch):
    monkeypatch.setenv("SFTFLOW_TEST_JUDGE_KEY", SECRET)
    server.replies = ["Score: 8/10. Correct.", "I'd give it 3 because it is vague", "excellent work"]
    judged = judge_generations(config(server), ITEMS)
    assert [j["judge_score"] for j in judged] == [8, 3, None]
    assert [j["id"] for j in judged] == ["a", "b", "c"] and judged[0]["response"] == "4"
    assert judged[1]["judge_reply"] == "I'd give it 3 because it is vague"
    assert len(server.requests) == 3
    method, path, headers, body = server.requests[0]
    assert (method, path) == ("POST", "/v1/chat/completions")
    assert headers["Authorization"] == f"Bearer {SECRET}"
    assert body["model"] == "judge-model" and body["temperature"] == 0
    assert "What is 2+2?" in body["messages"][-1]["content"] and "\n4\n" in body["messages"][-1]["content"]
    assert SECRET not in json.dumps(judged)
    assert "judge_score" not in ITEMS[0]  # the input items are not modified


def test_no_key_in_the_environment_sends_no_authorization(server, monkeypatch):
    monkeypatch.delenv("SFTFLOW_TEST_JUDGE_KEY", raising=False)
    assert check_judge_reachable(config(server)) == ["judge-model"]
    judge_generations(config(server), ITEMS[:1])
    assert all("Authorization" not in headers for _, _, headers, _ in server.requests)


def test_a_server_without_a_models_route_counts_as_reachable(server):
    assert check_judge_reachable(config(server, base_url=f"http://127.0.0.1:{server.server_address[1]}/other")) == []
    assert [(m, p) for m, p, _, _ in server.requests] == [("GET", "/other/models")]


def test_disabled_judge_makes_no_request(server):
    cfg = config(server, enabled=False)
    assert check_judge_reachable(cfg) is None
    assert judge_generations(cfg, ITEMS) == ITEMS
    assert server.requests == []
    assert check_judge_reachable(JudgeConfig()) is None  # the default: off, nothing configured


@pytest.mark.parametrize("missing", ["base_url", "model"])
def test_enabled_without_endpoint_settings_names_the_field(missing):
    cfg = JudgeConfig(enabled=True, **{"base_url": "http://127.0.0.1:9/v1", "model": "m", missing: None})
    with pytest.raises(ValueError, match=rf"eval\.judge\.{missing} is not set"):
        check_judge_reachable(cfg)
    with pytest.raises(ValueError, match=rf"eval\.judge\.{missing} is not set"):
        judge_generations(cfg, ITEMS)


def test_unreachable_endpoint_is_a_clear_error_without_the_key(monkeypatch):
    monkeypatch.setenv("SFTFLOW_TEST_JUDGE_KEY", SECRET)
    url = f"http://127.0.0.1:{free_port()}/v1"
    cfg = JudgeConfig(enabled=True, base_url=url, model="m", api_key_env="SFTFLOW_TEST_JUDGE_KEY", timeout_seconds=2)
    for call in (lambda: check_judge_reachable(cfg), lambda: judge_generations(cfg, ITEMS)):
        with pytest.raises(JudgeError) as caught:
            call()
        message = str(caught.value)
        assert f"LLM judge at {url}/" in message and "is unreachable" in message
        assert "start the OpenAI-compatible server" in message and "eval.judge.enabled: false" in message
        assert SECRET not in message and SECRET not in repr(caught.value.__cause__)


def test_rejected_key_error_names_the_variable_and_never_the_key(server, monkeypatch):
    monkeypatch.setenv("SFTFLOW_TEST_JUDGE_KEY", SECRET)
    server.status = 401  # and the body echoes the Authorization header
    for call in (lambda: check_judge_reachable(config(server)), lambda: judge_generations(config(server), ITEMS)):
        with pytest.raises(JudgeError) as caught:
            call()
        message = str(caught.value)
        assert "HTTP 401" in message and "SFTFLOW_TEST_JUDGE_KEY" in message
        assert SECRET not in message and "denied for Bearer ***" in message


def test_parse_score_takes_the_first_integer_in_range():
    assert parse_score("7") == 7
    assert parse_score("Rating: 10 - perfect") == 10
    assert parse_score("0 out of 10") is None
    assert parse_score("  ") is None
