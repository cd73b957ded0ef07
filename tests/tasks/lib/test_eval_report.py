"""The regression gate from the measured figures: checks, status and message."""

from __future__ import annotations

import math

import pytest

from sftflow.tasks.lib.eval_report import gate_report


def test_a_failed_check_gates_and_the_message_names_the_figures_and_the_remedies():
    gate = gate_report(0.05, general_ppl=12.3, general_ppl_base=10.0)
    assert gate["status"] == "gated" and gate["tolerance"] == 0.05
    general, heldout = gate["checks"]
    assert general == {"name": "general_ppl", "measured": True, "passed": False, "base": 10.0, "tuned": 12.3,
                       "ratio": pytest.approx(1.23)}
    assert heldout == {"name": "heldout_ppl", "measured": False, "passed": None, "base": None, "tuned": None, "ratio": None}
    assert gate["message"].startswith(
        "general perplexity rose from 10.00 (base) to 12.30 (tuned), +23.0% against a tolerance of +5%.")
    for remedy in ("mix.total_rows", "train.max_steps / num_train_epochs", "train.learning_rate",
                   "train.method: lora", "eval.on_regression: report"):
        assert remedy in gate["message"]


def test_the_heldout_check_compares_exp_of_the_losses_with_the_same_tolerance():
    limit = math.log(1.05)
    assert gate_report(0.05, heldout_loss=2.0 + limit - 1e-6, heldout_loss_base=2.0)["status"] == "passed"
    gated = gate_report(0.05, heldout_loss=2.0 + limit + 1e-6, heldout_loss_base=2.0)
    assert gated["status"] == "gated"
    check = gated["checks"][1]
    assert check["base"] == pytest.approx(math.exp(2.0)) and check["ratio"] == pytest.approx(1.05, rel=1e-5)
    assert gated["message"].startswith(f"held-out perplexity (exp of the held-out loss) rose from {math.exp(2):.2f} (base)")
    both = gate_report(0.05, 11.0, 10.0, 3.0, 2.0)["message"]  # two failures: a sentence each, then the remedy
    assert both.index("general perplexity rose") < both.index("held-out perplexity") < both.index("To pass the gate")


def test_nothing_measured_is_not_measured_and_a_nan_figure_fails():
    assert gate_report(0.05) == {"status": "not_measured", "tolerance": 0.05, "message": None, "checks": [
        {"name": name, "measured": False, "passed": None, "base": None, "tuned": None, "ratio": None}
        for name in ("general_ppl", "heldout_ppl")]}
    assert gate_report(0.05, general_ppl=math.nan, general_ppl_base=10.0)["status"] == "gated"
