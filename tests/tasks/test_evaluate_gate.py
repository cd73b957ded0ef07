"""The regression gate's data: checks, status and message, in the result, report.json, report.md and stats."""

from __future__ import annotations

import json
import math

import pytest

from sftflow.tasks.core.recipe_training import EvalConfig
from sftflow.tasks.evaluate import evaluate_model, evaluate_stage_output
from tests.tasks.lib.tiny_chat_lm import CONVERSATION, TEMPLATE, build_model, build_tokenizer, fine_tune, save
from tests.tasks.lib.tiny_chat_lm import one_cpu_thread  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """trained/ (a few steps on CONVERSATION) and random/ (the same init, untrained): worse on that row."""
    tokenizer = build_tokenizer()
    root = tmp_path_factory.mktemp("gate")
    save(fine_tune(build_model(tokenizer), tokenizer, CONVERSATION, steps=10), tokenizer, root / "trained")
    save(build_model(tokenizer), tokenizer, root / "random")
    return root


# ---------------------------------------------------------------------------- end to end --
def test_without_general_text_regressed_is_none_and_the_general_check_not_measured(folders, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_model(folders / "trained", folders / "trained", TEMPLATE, [{"messages": CONVERSATION}], [],
                            EvalConfig(max_new_tokens=1), max_length=128, out_dir=out)
    assert result["regressed"] is None
    general, heldout = result["gate"]["checks"]
    assert general["measured"] is False and general["passed"] is None
    assert heldout["measured"] is True and heldout["passed"] is True and heldout["ratio"] == pytest.approx(1.0)
    assert result["gate"]["status"] == "passed"
    report = json.loads((out / "report.json").read_text())
    assert report["regressed"] is None and report["gate"]["status"] == "passed"
    stats = evaluate_stage_output(result, out, model_id="m").stats
    assert stats["regressed"] is None and stats["gate"] == result["gate"]
    assert "- general perplexity: not measured" in result["report_md"]
    assert "- held-out perplexity (exp of the held-out loss): ok" in result["report_md"]
    assert "- gate: **passed**" in result["report_md"]


def test_a_tuned_model_worse_than_its_base_on_heldout_rows_is_gated(folders, tmp_path):
    out = tmp_path / "eval"
    # the "base" learned the held-out row; the "tuned" model is the untrained init: far worse on it
    result = evaluate_model(folders / "random", folders / "trained", TEMPLATE, [{"messages": CONVERSATION}], [],
                            EvalConfig(max_new_tokens=1), max_length=128, out_dir=out)
    gate = result["gate"]
    assert gate["status"] == "gated" and result["regressed"] is None  # gated by held-out, general not measured
    check = gate["checks"][1]
    assert check["measured"] and check["passed"] is False and check["ratio"] > 2
    values = {m["metric"]: m for m in result["metrics"]}
    assert check["tuned"] == pytest.approx(math.exp(values["heldout_loss"]["value"]))
    assert check["base"] == pytest.approx(math.exp(values["heldout_loss_base"]["value"]))
    assert values["heldout_loss"]["detail"]["passed"] is False
    assert values["heldout_loss"]["detail"]["ratio"] == pytest.approx(check["ratio"])
    assert f"rose from {check['base']:.2f} (base) to {check['tuned']:.2f} (tuned)" in gate["message"]
    assert "- held-out perplexity (exp of the held-out loss): **REGRESSED**" in result["report_md"]
    assert "- gate: **gated**: held-out perplexity" in result["report_md"]
    assert json.loads((out / "report.json").read_text())["gate"] == json.loads(json.dumps(gate))
    assert evaluate_stage_output(result, out, model_id="m").stats["gate"]["status"] == "gated"


def test_with_nothing_to_compare_the_gate_is_not_measured(folders, tmp_path):
    result = evaluate_model(folders / "random", folders / "trained", TEMPLATE, [], [], EvalConfig(max_new_tokens=1),
                            max_length=128, out_dir=tmp_path)
    assert result["gate"]["status"] == "not_measured" and result["regressed"] is None
    assert "- gate: **not_measured**" in result["report_md"]
