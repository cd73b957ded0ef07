"""What the evaluate stage reports: the regression gate, the metric rows and report.md.

- **Gate** (`gate_report`): two checks with the same rule, general perplexity and held-out
  perplexity (exp of the held-out loss), each failing when tuned > base * (1 + tolerance).
  `status` is "gated" when a measured check failed, "passed" when at least one was measured and
  none failed, "not_measured" otherwise; the flow decides what a gated model does to the run
  (eval.on_regression). `regressed` (`general_regressed`) is the general check's verdict alone,
  None when no general text was measured.
- **Metric rows** (`{metric, value, detail}`): what report.json, the stage stats and the catalog's
  `evals` table hold, tuned then base: held-out loss, general perplexity, instruction-following
  accuracy on `sftflow.tasks.lib.ifeval.IF_PROMPTS` (truncated and empty answers fail every check, and
  their counts are reported per model), and the train stage's mask audit.
- **report.md** (`render_report`): base vs tuned table, flags, mask audit numbers and a few
  generations.
"""

from __future__ import annotations

import math
import re
from typing import Any

from sftflow.tasks.lib.ifeval import IF_PROMPTS, score_responses
from sftflow.tasks.lib.lm_metrics import exp_or_inf

REPORT_GENERATIONS = 5  # generations shown in report.md (all are in generations.json)


# ------------------------------------------------------------------------------------ gate --
def regression_flag(tuned_ppl: float, base_ppl: float, tolerance: float) -> bool:
    """True when the tuned perplexity exceeds the base's by more than `tolerance` (a fraction), or is NaN.

    >>> regression_flag(10.6, 10.0, 0.05), regression_flag(10.4, 10.0, 0.05), regression_flag(math.nan, 10.0, 0.05)
    (True, False, True)
    """
    return not tuned_ppl <= base_ppl * (1 + tolerance)  # written so a NaN (a diverged model) is flagged


GATE_CHECKS = (  # (check name, how report.md and the gate message name it)
    ("general_ppl", "general perplexity"),
    ("heldout_ppl", "held-out perplexity (exp of the held-out loss)"),
)
GATE_ADVICE = ("To pass the gate: train on less data (mix.total_rows, train.max_steps / num_train_epochs), "
               "lower train.learning_rate or use train.method: lora; or set eval.on_regression: report to "
               "keep such a model.")


def _tolerance_text(tolerance: float) -> str:
    return f"+{tolerance * 100:g}%"


def _finite(x: float) -> float | None:
    """x, or None for inf/NaN: report.json and the catalog's JSON details stay strict JSON."""
    return x if math.isfinite(x) else None


def _figure(x: float | None) -> str:
    return "a figure that is not finite" if x is None else f"{x:.2f}"


def _change(ratio: float | None) -> str:
    return "an increase that is not finite" if ratio is None else f"{ratio - 1:+.1%}"


def gate_report(tolerance: float, general_ppl: float | None = None, general_ppl_base: float | None = None,
                heldout_loss: float | None = None, heldout_loss_base: float | None = None) -> dict[str, Any]:
    """The regression gate from the measured figures (None: not measured).

    Each check fails when tuned > base * (1 + tolerance), the rule of `regression_flag`; held-out
    perplexity is exp(held-out loss), compared as tuned_loss - base_loss > log(1 + tolerance). A
    non-finite tuned figure (NaN) fails. `status` is "gated" if a measured check failed, "passed"
    if at least one was measured and none failed, "not_measured" if none was measured; `message`
    (only when gated) names the figures and what to change.

    >>> g = gate_report(0.05, general_ppl=12.3, general_ppl_base=10.0, heldout_loss=2.0, heldout_loss_base=2.01)
    >>> g["status"], [(c["name"], c["measured"], c["passed"]) for c in g["checks"]]
    ('gated', [('general_ppl', True, False), ('heldout_ppl', True, True)])
    >>> print(g["message"])
    general perplexity rose from 10.00 (base) to 12.30 (tuned), +23.0% against a tolerance of +5%. To pass ...
    >>> g = gate_report(0.05, heldout_loss=2.1, heldout_loss_base=2.0)
    >>> g["status"], g["checks"][0]["measured"], g["checks"][0]["passed"], round(g["checks"][1]["ratio"], 4)
    ('gated', False, None, 1.1052)
    >>> gate_report(0.05, heldout_loss=2.0, heldout_loss_base=2.0)["status"], gate_report(0.05)["status"]
    ('passed', 'not_measured')

    A diverged model: a loss too large for exp() or a NaN perplexity gates, written as null.

    >>> g = gate_report(0.05, general_ppl=math.nan, general_ppl_base=10.0, heldout_loss=900.0, heldout_loss_base=2.0)
    >>> g["status"], [(c["passed"], c["tuned"], c["ratio"]) for c in g["checks"]]
    ('gated', [(False, None, None), (False, None, None)])
    >>> g["message"].split(". ")[0]
    'general perplexity rose from 10.00 (base) to a figure that is not finite (tuned), an increase that is not finite against a tolerance of +5%'

    """
    checks = []
    for name, tuned, base in (("general_ppl", general_ppl, general_ppl_base),
                              ("heldout_ppl", heldout_loss, heldout_loss_base)):
        if tuned is None or base is None:
            checks.append({"name": name, "measured": False, "passed": None, "base": None, "tuned": None, "ratio": None})
            continue
        if name == "heldout_ppl":
            # compared in loss space: exp() of a large loss would overflow before the ratio is taken
            log_ratio = tuned - base
            passed = bool(log_ratio <= math.log1p(tolerance))
            base, tuned, ratio = exp_or_inf(base), exp_or_inf(tuned), exp_or_inf(log_ratio)
        else:
            passed = not regression_flag(tuned, base, tolerance)
            ratio = tuned / base if base else math.inf
        checks.append({"name": name, "measured": True, "passed": passed,
                       "base": _finite(base), "tuned": _finite(tuned), "ratio": _finite(ratio)})
    failed = [c for c in checks if c["measured"] and not c["passed"]]
    status = "gated" if failed else ("passed" if any(c["measured"] for c in checks) else "not_measured")
    message = None
    if failed:
        names = dict(GATE_CHECKS)
        sentences = [f"{names[c['name']]} rose from {_figure(c['base'])} (base) to {_figure(c['tuned'])} (tuned), "
                     f"{_change(c['ratio'])} against a tolerance of {_tolerance_text(tolerance)}." for c in failed]
        message = " ".join(sentences + [GATE_ADVICE])
    return {"status": status, "tolerance": tolerance, "checks": checks, "message": message}


def general_regressed(gate: dict[str, Any]) -> bool | None:
    """The general perplexity check's verdict: None when general perplexity was not measured ("not
    regressed" would claim a check that never ran)."""
    general_check = gate["checks"][0]
    return None if not general_check["measured"] else not general_check["passed"]


def gate_summary(gate: dict[str, Any]) -> str:
    """The gate in one log line: the message when gated, else the status and the tolerance."""
    if gate["status"] == "gated":
        return f"gated: {gate['message']}"
    return f"{gate['status']} (tolerance {_tolerance_text(gate['tolerance'])})"


# --------------------------------------------------------------------------------- metrics --
def metric(name: str, value: float | int, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """One row of the metrics table: {metric, value (a float), detail}."""
    return {"metric": name, "value": float(value), "detail": detail or {}}


def mask_metrics(mask_audit: dict[str, Any]) -> list[dict[str, Any]]:
    """The train stage's mask audit as rows, so every number about a model sits in one `evals` table."""
    share = mask_audit.get("supervised_token_share")
    overall = share.get("overall") if isinstance(share, dict) else share
    metrics = []
    if overall is not None:
        detail = {k: share[k] for k in ("by_category", "by_source") if isinstance(share, dict) and k in share}
        metrics.append(metric("mask_supervised_token_share", overall, detail))
    if mask_audit.get("n_zero_supervised") is not None:
        metrics.append(metric("mask_zero_supervised_examples", mask_audit["n_zero_supervised"],
                              {"n_examples": mask_audit.get("n_examples")}))
    return metrics


def loss_metrics(gate: dict[str, Any], measured: dict[str, dict[str, Any]], n_rows: int, n_texts: int,
                 max_length: int) -> tuple[list[dict[str, Any]], list[str]]:
    """(metric rows, skipped notes) of held-out loss and general perplexity, tuned then base; the
    gate's verdicts sit on the tuned rows."""
    metrics: list[dict[str, Any]] = []
    skipped: list[str] = []
    base, tuned = measured["base"], measured["tuned"]
    tolerance = gate["tolerance"]
    general_check, heldout_check = gate["checks"]
    if heldout_check["measured"]:
        for suffix, m in (("", tuned), ("_base", base)):
            detail = {"n_examples": n_rows, "n_supervised_tokens": m["n_supervised_tokens"], "max_length": max_length}
            if suffix == "":  # the gate's held-out check, on the tuned row like general_ppl's
                detail.update(passed=heldout_check["passed"], ratio=heldout_check["ratio"], tolerance=tolerance)
            metrics.append(metric(f"heldout_loss{suffix}", m["heldout_loss"], detail))
    else:
        skipped.append("heldout_loss: no eval rows (mix.eval_fraction is 0) or none with an assistant token")
    if general_check["measured"]:
        metrics.append(metric("general_ppl", tuned["general_ppl"], {
            "regressed": general_regressed(gate), "tolerance": tolerance, "base": general_check["base"],
            "ratio": general_check["ratio"], "n_texts": n_texts}))
        metrics.append(metric("general_ppl_base", base["general_ppl"], {"n_texts": n_texts}))
    else:
        skipped.append("general_ppl: no general texts (set eval.general_text to a JSONL of {text})")
    return metrics, skipped


def if_scores(items: list[dict[str, Any]], measured: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """`score_responses` of base and tuned on the IF prompts (the first items; the rest are only read)."""
    n_if = len(IF_PROMPTS)
    return {label: score_responses(items[:n_if], measured[label]["responses"][:n_if],
                                   measured[label]["truncated"][:n_if])
            for label in ("base", "tuned")}


def if_metrics(if_eval: dict[str, dict[str, Any]], measured: dict[str, dict[str, Any]],
               max_new_tokens: int) -> list[dict[str, Any]]:
    """Prompt- and instruction-level IF accuracy rows, tuned then base."""
    n_if = len(IF_PROMPTS)
    metrics = []
    for suffix, label in (("", "tuned"), ("_base", "base")):
        scored = if_eval[label]
        per_kind = {kind: tally["accuracy"] for kind, tally in scored["per_kind"].items()}
        # n_truncated / n_empty: IF answers that failed every check for want of a finished answer
        metrics.append(metric(f"if_prompt_acc{suffix}", scored["prompt_level_accuracy"], {
            "n_prompts": scored["n_prompts"], "n_truncated": sum(measured[label]["truncated"][:n_if]),
            "n_empty": scored["n_empty"], "max_new_tokens": max_new_tokens}))
        metrics.append(metric(f"if_instruction_acc{suffix}", scored["instruction_level_accuracy"],
                              {"n_instructions": scored["n_instructions"], "per_kind": per_kind}))
    return metrics


def generation_rows(items: list[dict[str, Any]], measured: dict[str, dict[str, Any]],
                    if_eval: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """generations.json: per prompt both answers, whether each was truncated, and (IF prompts) whether it passed."""
    n_if = len(IF_PROMPTS)
    base, tuned = measured["base"], measured["tuned"]
    generations = []
    for index, item in enumerate(items):
        row = {"id": item["id"], "prompt": item["prompt"],
               "base": base["responses"][index], "tuned": tuned["responses"][index],
               "truncated_base": base["truncated"][index], "truncated_tuned": tuned["truncated"][index]}
        if index < n_if:
            row["if_passed_base"] = if_eval["base"]["items"][index]["passed"]
            row["if_passed_tuned"] = if_eval["tuned"]["items"][index]["passed"]
        generations.append(row)
    return generations


def model_generation_counts(measured: dict[str, Any]) -> dict[str, int]:
    """One model's generations, truncated ones and empty ones."""
    return {"n_generations": len(measured["truncated"]), "n_truncated": sum(measured["truncated"]),
            "n_empty": sum(not r.strip() for r in measured["responses"])}


def generation_counts(measured: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per model (base, tuned): `model_generation_counts`."""
    return {label: model_generation_counts(measured[label]) for label in ("base", "tuned")}


# ---------------------------------------------------------------------------------- report --
ROWS = (  # (label in report.md, tuned metric, base metric)
    ("held-out loss (assistant tokens)", "heldout_loss", "heldout_loss_base"),
    ("general perplexity", "general_ppl", "general_ppl_base"),
    ("IF prompt-level accuracy", "if_prompt_acc", "if_prompt_acc_base"),
    ("IF instruction-level accuracy", "if_instruction_acc", "if_instruction_acc_base"),
    ("judge score (1-10)", "judge_score_mean", "judge_score_mean_base"),
)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4g}"


def _fenced(text: str) -> str:
    # a fence longer than any backtick run inside, so a generated ``` cannot close it early
    longest = max((len(run) for run in re.findall(r"`+", text)), default=0)
    fence = "`" * max(3, longest + 1)
    return f"{fence}text\n{text}\n{fence}"


def render_report(report: dict[str, Any], generations: list[dict[str, Any]]) -> str:
    """report.md: base vs tuned table, flags, mask audit numbers and a few generations."""
    values = {m["metric"]: m for m in report["metrics"]}
    lines = ["# Evaluation report", "", f"- tuned: `{report['tuned']}`", f"- base: `{report['base']}`",
             f"- both measured in {report['eval_dtype']} on {report['eval_device']}", "",
             "| metric | base | tuned | change |", "|---|---:|---:|---:|"]
    for label, tuned_name, base_name in ROWS:
        if tuned_name not in values:
            continue
        tuned_value = values[tuned_name]["value"]
        base_value = values[base_name]["value"] if base_name in values else None
        change = f"{(tuned_value - base_value) / base_value:+.1%}" if base_value else "–"
        lines.append(f"| {label} | {_fmt(base_value)} | {_fmt(tuned_value)} | {change} |")
    lines += ["", "## Flags", ""]
    gate = report["gate"]
    names = dict(GATE_CHECKS)
    for check in gate["checks"]:
        if not check["measured"]:
            lines.append(f"- {names[check['name']]}: not measured")
            continue
        verdict = "ok" if check["passed"] else "**REGRESSED**"
        lines.append(f"- {names[check['name']]}: {verdict} (tuned {_fmt(check['tuned'])} vs base {_fmt(check['base'])}, "
                     f"ratio {_fmt(check['ratio'])}, tolerance {_tolerance_text(gate['tolerance'])})")
    lines.append(f"- gate: **{gate['status']}**" + (f": {gate['message']}" if gate["message"] else ""))
    for label, counts in report["generation_counts"].items():
        if counts["n_truncated"] or counts["n_empty"]:
            lines.append(f"- {label}: {counts['n_truncated']} of {counts['n_generations']} generations truncated at "
                         f"eval.max_new_tokens, {counts['n_empty']} empty (both fail every IF check)")
    for note in report["skipped"]:
        lines.append(f"- skipped {note}")
    mask = [values[name] for name in ("mask_supervised_token_share", "mask_zero_supervised_examples") if name in values]
    if mask:
        lines += ["", "## Training masks", ""]
        lines += [f"- {m['metric']}: {_fmt(m['value'])}" for m in mask]
    lines += ["", f"## Generations (first {min(REPORT_GENERATIONS, len(generations))} of {len(generations)}; "
                  "all in generations.json)", ""]
    for g in generations[:REPORT_GENERATIONS]:
        lines += [f"### {g['id']}", "", _fenced(g["prompt"]), ""]
        for label in ("base", "tuned"):
            passed = g.get(f"if_passed_{label}")
            mark = "" if passed is None else (" — checks pass" if passed else " — checks fail")
            if g.get(f"truncated_{label}"):
                mark += " (truncated at eval.max_new_tokens)"
            lines += [f"**{label}**{mark}", "", _fenced(g[label]), ""]
    return "\n".join(lines).rstrip() + "\n"
