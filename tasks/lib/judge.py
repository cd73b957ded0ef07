"""Optional LLM judge: grade generations 1-10 through an OpenAI-compatible endpoint (off by default).

Any server speaking the OpenAI chat-completions protocol works (vLLM, llama.cpp server, Ollama's
/v1, a hosted API). Requests go through urllib, so the judge adds no dependency. The API key is
read from the environment variable named by `eval.judge.api_key_env` at request time; it is sent
only in the Authorization header and is never written to results, logs or error messages (error
texts are scrubbed of it, in case a server echoes the header back). Local servers usually need
no key: when the variable is unset, no Authorization header is sent.
"""

from __future__ import annotations

import json
import os
import re
import socket
import urllib.error
import urllib.request
from typing import Any

from sftflow.tasks.core.recipe_training import JudgeConfig

SCORE_MIN, SCORE_MAX = 1, 10
REPLY_PREVIEW_CHARS = 300
JUDGE_SYSTEM_PROMPT = (
    "You grade answers written by an AI assistant. Consider helpfulness, correctness and whether "
    f"the answer follows the user's instructions. Reply with a single integer from {SCORE_MIN} "
    f"(useless) to {SCORE_MAX} (excellent), then optionally one short sentence of justification."
)


class JudgeError(RuntimeError):
    """The judge endpoint could not be used; the message says which URL and what to do."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status  # the HTTP status when the server answered, else None


def _api_key(cfg: JudgeConfig) -> str | None:
    key = os.environ.get(cfg.api_key_env)
    return key or None


def _scrub(text: str, key: str | None) -> str:
    """Remove the API key from a text that is about to leave this module (errors, results)."""
    return text.replace(key, "***") if key else text


def _require_settings(cfg: JudgeConfig) -> str:
    for field_name in ("base_url", "model"):
        if not getattr(cfg, field_name):
            raise ValueError(
                f"eval.judge.enabled is true but eval.judge.{field_name} is not set; set it "
                "(e.g. base_url: http://localhost:8000/v1, model: <judge model name>) "
                "or set eval.judge.enabled: false"
            )
    return cfg.base_url.rstrip("/")


def _request(url: str, cfg: JudgeConfig, body: dict[str, Any] | None) -> dict[str, Any]:
    """GET (body None) or POST JSON to `url`; returns the decoded JSON reply or raises JudgeError."""
    key = _api_key(cfg)
    headers = {"Accept": "application/json"}
    data = None
    if body is not None:
        headers["Content-Type"] = "application/json"
        data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, headers=headers, method="GET" if body is None else "POST")
    if key:
        # Unredirected: urllib would otherwise copy the key to wherever a redirect points.
        request.add_unredirected_header("Authorization", f"Bearer {key}")
    fix = "start the OpenAI-compatible server there, fix eval.judge.base_url, or set eval.judge.enabled: false"
    try:
        with urllib.request.urlopen(request, timeout=cfg.timeout_seconds) as response:
            payload = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read()[:REPLY_PREVIEW_CHARS].decode("utf-8", "replace")
        hint = (
            f"check the key in the environment variable {cfg.api_key_env}"
            if exc.code in (401, 403) else "check eval.judge.base_url and eval.judge.model"
        )
        raise JudgeError(_scrub(f"LLM judge at {url} answered HTTP {exc.code}: {detail!r}; {hint}", key),
                         status=exc.code) from None
    except (urllib.error.URLError, socket.timeout, TimeoutError, ConnectionError) as exc:
        reason = getattr(exc, "reason", exc)
        raise JudgeError(_scrub(f"LLM judge at {url} is unreachable ({reason}); {fix}", key)) from None
    try:
        return json.loads(payload)
    except ValueError:
        preview = payload[:REPLY_PREVIEW_CHARS].decode("utf-8", "replace")
        raise JudgeError(_scrub(f"LLM judge at {url} did not answer JSON: {preview!r}; {fix}", key)) from None


def check_judge_reachable(cfg: JudgeConfig) -> list[str] | None:
    """Fail early, before any model is loaded, when an enabled judge cannot be used.

    Returns the model ids the endpoint lists (GET {base_url}/models), [] when it lists none, or
    None when the judge is disabled (then nothing is requested). A server that is up but does
    not implement /models (HTTP 404/405) counts as reachable.
    """
    if not cfg.enabled:
        return None
    base_url = _require_settings(cfg)
    try:
        reply = _request(f"{base_url}/models", cfg, None)
    except JudgeError as exc:
        if exc.status in (404, 405):
            return []
        raise
    data = reply.get("data") if isinstance(reply, dict) else None
    return [str(m.get("id")) for m in data if isinstance(m, dict)] if isinstance(data, list) else []


def parse_score(text: str) -> int | None:
    """The first integer in the judge's reply, when it is a valid score.

    >>> parse_score("Score: 8/10. Clear and correct."), parse_score("I would say 11"), parse_score("good")
    (8, None, None)
    """
    match = re.search(r"\d+", text)
    if match is None:
        return None
    score = int(match.group())
    return score if SCORE_MIN <= score <= SCORE_MAX else None


def judge_prompt(prompt: str, response: str) -> str:
    return f"User request:\n{prompt}\n\nAssistant answer:\n{response}\n\nScore ({SCORE_MIN}-{SCORE_MAX}):"


def judge_generations(cfg: JudgeConfig, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Grade each {prompt, response} item; returns copies with judge_score (int or None) and judge_reply.

    Disabled: the items are returned unchanged (copied) and no request is made.
    """
    if not cfg.enabled:
        return [dict(item) for item in items]
    url = f"{_require_settings(cfg)}/chat/completions"
    key = _api_key(cfg)
    judged = []
    for item in items:
        body = {
            "model": cfg.model,
            "messages": [
                {"role": "system", "content": JUDGE_SYSTEM_PROMPT},
                {"role": "user", "content": judge_prompt(item["prompt"], item["response"])},
            ],
            "temperature": 0,
            "max_tokens": 64,
        }
        reply = _request(url, cfg, body)
        try:
            text = reply["choices"][0]["message"]["content"] or ""
        except (KeyError, IndexError, TypeError):
            preview = json.dumps(reply)[:REPLY_PREVIEW_CHARS]
            raise JudgeError(
                _scrub(f"LLM judge at {url} answered without choices[0].message.content: {preview}; "
                       "is it an OpenAI-compatible chat-completions endpoint?", key)
            ) from None
        text = _scrub(text, key)
        judged.append({**item, "judge_score": parse_score(text), "judge_reply": text[:REPLY_PREVIEW_CHARS]})
    return judged
