"""What a run shows in the Prefect UI: one artifact per stage, the run's cards, plots and reports.

Keys (lowercase, dashes: Prefect's rule) stay the same from run to run, so the UI's Artifacts page
keeps each one's history: `sftflow-<stage>[-<source>]` (counts and drop reasons per stage),
`sftflow-mask-audit`, `sftflow-loss-plot` (an image: the PNG inlined as a data URL, so it shows
without a file server), `sftflow-model-card`, `sftflow-eval-report`, `sftflow-data-card`, and
`sftflow-run` (ledger, realized mixture and links to the others).
"""

from __future__ import annotations

import base64
from typing import Any

from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact

from tasks.core.artifacts import Manifest

ARTIFACT_KEYS = {
    "mask_audit": "sftflow-mask-audit",
    "loss_plot": "sftflow-loss-plot",
    "model_card": "sftflow-model-card",
    "eval_report": "sftflow-eval-report",
    "data_card": "sftflow-data-card",
    "run": "sftflow-run",
}


def stage_artifact_key(stage: str, label: str | None) -> str:
    """sftflow-<stage>[-<label>] in Prefect's key alphabet.

    >>> stage_artifact_key("ingest", "alpaca_sample"), stage_artifact_key("dedup", "")
    ('sftflow-ingest-alpaca-sample', 'sftflow-dedup')
    """
    slug = f"{stage}-{label or ''}".strip("-").replace("_", "-").lower()
    return "sftflow-" + "".join(c if c.isalnum() or c == "-" else "-" for c in slug)


def publish_stage(row: dict[str, Any], manifest: Manifest, run_id: str) -> None:
    """The stage's counts, and one line per drop reason."""
    reasons = manifest.stats.get("reasons", {})
    table = [{"stage": row["stage"], "source": row["label"] or "-", "rows in": row["n_in"],
              "rows out": row["n_out"], "cache hit": row["cache_hit"], "seconds": row["seconds"],
              "artifact": manifest.key}]
    table += [{"stage": row["stage"], "source": f"reason: {r}", "rows in": None, "rows out": n,
               "cache hit": None, "seconds": None, "artifact": None} for r, n in sorted(reasons.items())]
    create_table_artifact(key=stage_artifact_key(row["stage"], row["label"]), table=table,
                          description=f"{row['stage']} counts for run {run_id}")
    if manifest.stage == "train":
        publish_training(manifest, run_id)
    elif manifest.stage == "evaluate":
        create_markdown_artifact(key=ARTIFACT_KEYS["eval_report"],
                                 markdown=manifest.file("report.md").read_text(encoding="utf-8"),
                                 description=f"evaluation report, run {run_id}")


def publish_training(manifest: Manifest, run_id: str) -> None:
    audit = manifest.stats.get("mask_audit", {})
    lines = ["## Mask audit", "", "| check | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(audit.items()) if not isinstance(v, (dict, list))]
    lines += ["", f"Full audit (per category and source): `{manifest.file('mask_audit.json')}`"]
    create_markdown_artifact(key=ARTIFACT_KEYS["mask_audit"], markdown="\n".join(lines),
                             description=f"loss-mask audit of the train split, run {run_id}")
    plot = manifest.file("training.png")
    if plot.is_file():
        data_url = "data:image/png;base64," + base64.b64encode(plot.read_bytes()).decode("ascii")
        create_image_artifact(image_url=data_url, key=ARTIFACT_KEYS["loss_plot"],
                              description=f"loss, learning rate and grad norm per step, run {run_id} ({plot})")
    card = manifest.file("MODEL_CARD.md")
    if card.is_file():
        create_markdown_artifact(key=ARTIFACT_KEYS["model_card"], markdown=card.read_text(encoding="utf-8"),
                                 description=f"model card, run {run_id} ({card})")


def publish_data_card(markdown: str, run_id: str) -> None:
    create_markdown_artifact(key=ARTIFACT_KEYS["data_card"], markdown=markdown,
                             description=f"data card, run {run_id}")


def publish_run(summary: dict[str, Any]) -> None:
    """The run's ledger and realized mixture, and links to its cards and reports."""
    lines = [f"# sftflow run `{summary['run_id']}` — recipe `{summary['recipe']}`", ""]
    # What was published follows from what ran: the data card with mix, three artifacts with train.
    ran = {s["stage"] for s in summary["stages"]}
    links = [("Data card", "data_card", "mix"), ("Model card", "model_card", "train"),
             ("Mask audit", "mask_audit", "train"), ("Loss plot", "loss_plot", "train"),
             ("Evaluation report", "eval_report", "evaluate")]
    lines += [f"- [{title}](/artifacts/key/{ARTIFACT_KEYS[name]})" for title, name, stage in links if stage in ran]
    lines += [f"- {name}: `{path}`" for name, path in sorted(summary.get("cards", {}).items())]
    lines += ["", "## Ledger", "", "| stage | in | kept | dropped |", "|---|---:|---:|---:|"]
    lines += [f"| {r['stage']} | {r['n_in']} | {r['n_kept']} | {r['n_dropped']} |" for r in summary["ledger"]]
    lines += ["", "## Realized mixture", "",
              "| category | target share | realized share | train rows | unique | eval rows |",
              "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {m['category']} | {m['target_share']:.3f} | {m['realized_share']:.3f} | {m['n_rows']} | "
              f"{m['n_unique']} | {m['n_eval']} |" for m in summary["mixture"]]
    if summary.get("evals"):
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---:|"]
        lines += [f"| {m['metric']} | {m['value']:.4g} |" for m in summary["evals"]]
    create_markdown_artifact(key=ARTIFACT_KEYS["run"], markdown="\n".join(lines),
                             description=f"run {summary['run_id']}: ledger, mixture, cards")
