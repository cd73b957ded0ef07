"""The model gate: what the flow does when evaluation says the tuned model got worse than its base.

The evaluate stage measures and reports (`stats["gate"]`: status `passed`, `gated` or
`not_measured`, one check per measured comparison, and a message naming the figures). The flow
decides what a tripped gate does to the run, from `eval.on_regression`, which is not part of the
evaluate key (changing it re-uses the evaluation):

- `fail` (default): the run ends with status `gated` in the catalog, the Prefect flow run is
  Failed and `sftflow run` exits with GATED_EXIT_CODE. Every artifact stays committed (the model
  included) and the catalog marks the model (`models.gate`, an `evals` row `gated`), so a
  scheduled run never hands on such a model quietly, and nothing has to be recomputed to inspect
  it or to accept it with `--set eval.on_regression=report`.
- `report`: the run completes; the report and the catalog still say `gated`.
"""

from __future__ import annotations

from typing import Any

GATED_EXIT_CODE = 4  # `sftflow run`: every stage ran, the tuned model failed the gate
GATE_STATUSES = ("passed", "gated", "not_measured")


class ModelGated(RuntimeError):
    """The tuned model failed the evaluation gate and eval.on_regression is `fail`.

    `summary` is the run summary (set by the flow before raising), for the command line to print.
    """

    def __init__(self, message: str, gate: dict[str, Any] | None = None, summary: dict[str, Any] | None = None):
        super().__init__(message)
        self.gate = gate or {}
        self.summary = summary

    def __reduce__(self):  # rebuilt with its gate and summary wherever an exception is copied
        return type(self), (str(self), self.gate, self.summary)


def gate_status(stats: dict[str, Any]) -> str:
    """The gate status an evaluate artifact recorded (`not_measured` for one written before the gate).

    >>> gate_status({"gate": {"status": "gated"}}), gate_status({})
    ('gated', 'not_measured')
    """
    status = (stats.get("gate") or {}).get("status", "not_measured")
    if status not in GATE_STATUSES:
        raise ValueError(f"evaluate stats: unknown gate status {status!r}; expected one of {GATE_STATUSES}")
    return status


def gate_verdict(gate: dict[str, Any] | None) -> tuple[str, str]:
    """(status, why) for the run summary and its artifact: the message when gated.

    >>> gate_verdict({"status": "passed"})
    ('passed', 'general and held-out perplexity within eval.regression_tolerance')
    >>> gate_verdict(None)
    ('not_measured', 'no held-out rows and no eval.general_text')
    """
    status = gate_status({"gate": gate})
    if status == "gated":
        return status, (gate or {}).get("message") or "the tuned model is worse than its base"
    if status == "passed":
        return status, "general and held-out perplexity within eval.regression_tolerance"
    return status, "no held-out rows and no eval.general_text"


def gate_failure(stats: dict[str, Any], on_regression: str, model_path: str) -> ModelGated | None:
    """The error that ends the run, or None when the run may complete.

    >>> stats = {"gate": {"status": "gated", "message": "general perplexity rose ..."}}
    >>> str(gate_failure(stats, "fail", "/w/artifacts/train/k/model")).splitlines()[0]
    'model gate: general perplexity rose ...'
    >>> gate_failure(stats, "report", "/m") is None, gate_failure({"gate": {"status": "passed"}}, "fail", "/m")
    (True, None)
    """
    if gate_status(stats) != "gated" or on_regression != "fail":
        return None
    gate = stats["gate"]
    message = (
        f"model gate: {gate_verdict(gate)[1]}\n"
        f"The model is kept at {model_path} and marked gated in the catalog (models.gate); "
        "the run ends failed because eval.on_regression is fail."
    )
    return ModelGated(message, gate)


def metric_text(value: float | None) -> str:
    """A metric's value for the run summary and its artifact: a diverged model's figures arrive as
    None (JSON has no NaN or infinity) and must print, not end the run with a format error.

    >>> metric_text(2124.56), metric_text(0.2143), metric_text(None)
    ('2125', '0.2143', 'not finite')
    """
    return "not finite" if value is None else f"{value:.4g}"
