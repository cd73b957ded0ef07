"""What a run shows in the Prefect UI: one artifact per stage, the run's cards, plots and reports.

Keys (lowercase, dashes: Prefect's rule) stay the same from run to run, so the UI's Artifacts page
keeps each one's history: `sftflow-<stage>[-<source>]` (counts and drops by reason per stage, counted
from the stage's decisions file, the same rows the catalog loads),
`sftflow-mask-audit`, `sftflow-loss-plot` (an image: the PNG inlined as a data URL, so it shows
without a file server), `sftflow-model-card`, `sftflow-eval-report`, `sftflow-data-card`,
`sftflow-run` (ledger, drops by stage and reason, realized mixture and links to the others), and
`sftflow-run-diff` (what changed since the previous completed run of the recipe: `sftflow diff`).
"""

from __future__ import annotations

import base64
import logging
from pathlib import Path
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect.artifacts import create_image_artifact, create_markdown_artifact, create_table_artifact
from prefect.exceptions import MissingContextError
from prefect.logging import get_run_logger

from sftflow.flows.gate import gate_verdict, metric_text
from sftflow.tasks.core.artifacts import DECISIONS_FILE, Manifest
from sftflow.tasks.core.catalog import connect_readonly
from sftflow.tasks.core.run_diff import diff_tables, previous_run, run_diff, same_artifacts

ARTIFACT_KEYS = {
    "mask_audit": "sftflow-mask-audit",
    "loss_plot": "sftflow-loss-plot",
    "model_card": "sftflow-model-card",
    "eval_report": "sftflow-eval-report",
    "data_card": "sftflow-data-card",
    "run": "sftflow-run",
    "run_diff": "sftflow-run-diff",
}
# Columns of a stage's table artifact; every line has all of them (empty where they do not apply).
STAGE_TABLE_COLUMNS = ("stage", "source", "rows in", "rows out", "dropped", "reason", "rows computed",
                       "rows reused", "cache hit", "seconds", "artifact", "why computed")


def stage_artifact_key(stage: str, label: str | None) -> str:
    """sftflow-<stage>[-<label>] in Prefect's key alphabet.

    >>> stage_artifact_key("ingest", "alpaca_sample"), stage_artifact_key("dedup", "")
    ('sftflow-ingest-alpaca-sample', 'sftflow-dedup')
    """
    slug = f"{stage}-{label or ''}".strip("-").replace("_", "-").lower()
    return "sftflow-" + "".join(c if c.isalnum() or c == "-" else "-" for c in slug)


def drops_by_reason(manifest: Manifest) -> dict[str, int]:
    """Rows the stage dropped, by reason, most first (ties by name), counted from its decisions
    file: the file the catalog loads, so the UI and `sftflow sql` show the same numbers. Stages
    without decisions (evaluate; train artifacts from before train decided rows) give {}."""
    path = manifest.file(DECISIONS_FILE)
    if not path.is_file():
        return {}
    decisions = pq.read_table(path, columns=["kept", "reason"])
    dropped = decisions.filter(pc.invert(decisions["kept"])).group_by("reason").aggregate([("reason", "count")])
    counts = zip(dropped["reason"].to_pylist(), dropped["reason_count"].to_pylist())
    return dict(sorted(counts, key=lambda rn: (-rn[1], rn[0])))


def memo_counts(row: dict[str, Any], manifest: Manifest) -> tuple[int | None, int | None]:
    """(rows computed, rows reused from the row memo) by this stage run; (None, None) for a stage
    without a row memo, and for a cache hit, which computed nothing (its artifact's counts belong
    to the run that wrote it).

    >>> m = Manifest.model_construct(stats={"n_reused": 30})
    >>> memo_counts({"cache_hit": False, "n_in": 100}, m), memo_counts({"cache_hit": True, "n_in": 100}, m)
    ((70, 30), (None, None))
    """
    reused = manifest.stats.get("n_reused")
    if reused is None or row["cache_hit"]:
        return None, None
    return row["n_in"] - reused, reused


def stage_table(row: dict[str, Any], manifest: Manifest) -> list[dict[str, Any]]:
    """The stage's counts line, then one line per drop reason."""
    drops = drops_by_reason(manifest)
    computed, reused = memo_counts(row, manifest)
    table = [{"stage": row["stage"], "source": row["label"] or "-", "rows in": row["n_in"],
              "rows out": row["n_out"], "dropped": sum(drops.values()), "reason": "(all)",
              "rows computed": computed, "rows reused": reused,
              "cache hit": row["cache_hit"], "seconds": row["seconds"], "artifact": manifest.key,
              # which key inputs changed since the recipe's last run (tasks/core/why.py); empty on a hit
              "why computed": row.get("why") or None}]
    table += [{"stage": row["stage"], "source": row["label"] or "-", "dropped": n, "reason": reason}
              for reason, n in drops.items()]
    return [{column: line.get(column) for column in STAGE_TABLE_COLUMNS} for line in table]


def publish_stage(row: dict[str, Any], manifest: Manifest, run_id: str) -> None:
    """The stage's counts, and one line per drop reason."""
    table = stage_table(row, manifest)
    if manifest.stage == "mix":
        table += [{"stage": "mix", "source": line, "rows in": None, "rows out": None, "cache hit": None,
                   "seconds": None, "artifact": None} for line in mix_policy_lines(manifest.stats)]
    table = [{column: line.get(column) for column in STAGE_TABLE_COLUMNS} for line in table]  # one shape
    create_table_artifact(key=stage_artifact_key(row["stage"], row["label"]), table=table,
                          description=f"{row['stage']} counts and drops by reason for run {run_id}")
    if manifest.stage == "train":
        publish_training(manifest, run_id)
    elif manifest.stage == "evaluate":
        create_markdown_artifact(key=ARTIFACT_KEYS["eval_report"],
                                 markdown=manifest.file("report.md").read_text(encoding="utf-8"),
                                 description=f"evaluation report, run {run_id}")


def mix_policy_lines(stats: dict[str, Any]) -> list[str]:
    """What mix did about short categories and categories left out of mix.shares, in words.

    >>> for line in mix_policy_lines({"short_category": {"policy": "scale_down", "outcome": "scaled_down",
    ...         "short_categories": [{"category": "code", "n_available": 40, "n_cap": 120, "n_needed": 200}],
    ...         "n_train_rows_target": 400, "n_train_rows": 240}, "categories_not_in_shares": ["math"]}):
    ...     print(line)
    short category code: 40 rows, at most 120 under max_upsample, 200 needed
    policy scale_down: scaled_down (train rows 400 -> 240)
    not in mix.shares (not sampled): math
    """
    policy = stats.get("short_category") or {}
    lines = [f"short category {s['category']}: {s['n_available']} rows, at most {s['n_cap']} under max_upsample, "
             f"{s['n_needed']} needed" for s in policy.get("short_categories", [])]
    if policy:
        lines.append(f"policy {policy['policy']}: {policy['outcome']} "
                     f"(train rows {policy['n_train_rows_target']} -> {policy['n_train_rows']})")
    if stats.get("categories_not_in_shares"):
        lines.append("not in mix.shares (not sampled): " + ", ".join(stats["categories_not_in_shares"]))
    return lines


def publish_training(manifest: Manifest, run_id: str) -> None:
    audit = manifest.stats.get("mask_audit", {})
    lines = ["## Mask audit", "", "| check | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in sorted(audit.items()) if not isinstance(v, (dict, list))]
    lowest = audit.get("assistant_content_min_supervised_share")
    threshold = audit.get("assistant_content_share_threshold")
    if lowest is not None and threshold is not None:
        # The passing audit's headline: how much of each answer the loss really sees.
        lines += ["", f"Assistant content supervised: at least {lowest:.0%} of each checked assistant turn's "
                      f"content tokens (threshold {threshold:.0%})."]
    not_located = audit.get("assistant_turns_content_not_located")
    if not_located:
        lines += ["", f"{not_located} assistant turns could not be located in the rendered text (the template "
                      "rewrites their content), so their content supervision was not checked."]
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


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def drop_reason_lines(summary: dict[str, Any]) -> list[str]:
    """The run's drops by stage and reason (the summary's catalog query), stages in ledger order.

    >>> print("\\n".join(drop_reason_lines({"ledger": [{"stage": "dedup"}, {"stage": "filter"}],
    ...     "drop_reasons": [{"stage": "filter", "reason": "toxic", "n": 2},
    ...                      {"stage": "dedup", "reason": "exact_duplicate", "n": 5}]})))
    | stage | reason | dropped |
    |---|---|---:|
    | dedup | exact_duplicate | 5 |
    | filter | toxic | 2 |
    """
    if not summary.get("drop_reasons"):
        return ["No rows dropped."]
    order = {r["stage"]: i for i, r in enumerate(summary.get("ledger", []))}
    rows = sorted(summary["drop_reasons"], key=lambda d: (order.get(d["stage"], len(order)), -d["n"], d["reason"]))
    return ["| stage | reason | dropped |", "|---|---|---:|"] + [
        f"| {d['stage']} | {d['reason']} | {d['n']} |" for d in rows]


def gate_line(gate: dict[str, Any] | None) -> str:
    """The model gate's verdict in one Markdown line.

    >>> gate_line({"status": "gated", "message": "general perplexity rose from 10 to 12 (+20%)."})
    '**Model gate: GATED.** general perplexity rose from 10 to 12 (+20%).'
    >>> gate_line(None)
    '**Model gate: not measured** (no held-out rows and no eval.general_text).'
    """
    status, why = gate_verdict(gate)
    if status == "gated":
        return f"**Model gate: GATED.** {why}"
    return f"**Model gate: {status.replace('_', ' ')}** ({why})."


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
    lines += ["", "## Drops by reason", ""] + drop_reason_lines(summary)
    lines += ["", "## Realized mixture", "",
              "Shares are of the unit the targets use (`share unit`: rows, or tokens with mix.total_tokens); "
              "`outcome`: held, short (max_upsample limits it), scaled_down (the whole mixture shrank so every "
              "share holds), filled (took a short category's rows), not_in_shares / zero_share (not sampled).", "",
              "| category | share unit | target share | realized share | realized, rows | realized, tokens | "
              "train rows | unique | eval rows | outcome |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    lines += [f"| {m['category']} | {m.get('share_unit', 'rows')} | {m['target_share']:.3f} | "
              f"{m['realized_share']:.3f} | {_share(m.get('realized_share_rows'))} | "
              f"{_share(m.get('realized_share_tokens'))} | {m['n_rows']} | {m['n_unique']} | {m['n_eval']} | "
              f"{m.get('outcome', '')} |" for m in summary["mixture"]]
    if summary.get("evals"):
        lines += ["", "## Evaluation", "", gate_line(summary.get("gate")), "", "| metric | value |", "|---|---:|"]
        lines += [f"| {m['metric']} | {metric_text(m['value'])} |" for m in summary["evals"]]
    create_markdown_artifact(key=ARTIFACT_KEYS["run"], markdown="\n".join(lines),
                             description=f"run {summary['run_id']}: ledger, mixture, cards")


RUN_DIFF_ROWS = 20  # changed example ids the run-diff artifact names (`sftflow diff --rows` lists more)
RUN_DIFF_SHARDS = 20  # changed shards the run-diff artifact names (`sftflow diff` lists them all)


def publish_run_diff(catalog_path: Path | str, run_id: str) -> None:
    """What changed since the previous completed run of the recipe, as an artifact. The run has
    finished when this runs: a diff that cannot be made is a warning, never the run's failure."""
    try:
        with connect_readonly(Path(catalog_path)) as con:
            previous = previous_run(con, run_id)
            recipe = con.execute("SELECT recipe_name FROM runs WHERE run_id = ?", [run_id]).fetchone()[0]
            if previous and same_artifacts(con, previous, run_id):  # an unchanged re-run: skip the row diff
                markdown = (f"# Changes in run `{run_id}` — recipe `{recipe}`\n\nNothing changed: every stage "
                            f"used the artifacts run `{previous}` used.")
            else:
                diff = run_diff(con, previous, run_id, rows_limit=RUN_DIFF_ROWS) if previous else None
                markdown = run_diff_markdown(diff, run_id, recipe)
        create_markdown_artifact(key=ARTIFACT_KEYS["run_diff"], markdown=markdown,
                                 description=f"run {run_id} against the previous completed run of {recipe}")
    except Exception as exc:  # whatever went wrong here, the run's own result stands
        _warn(f"the run's diff against the previous run was not published: {type(exc).__name__}: {exc}")


def _warn(message: str) -> None:
    try:
        get_run_logger().warning(message)
    except MissingContextError:  # called outside a flow run (a script, a test)
        logging.getLogger(__name__).warning(message)


def _cells(row: tuple | list) -> str:
    return "| " + " | ".join("-" if v is None else str(v).replace("|", "\\|") for v in row) + " |"


def _markdown_table(columns: list[str], rows: list[tuple]) -> list[str]:
    return [_cells(columns), "|" + "---|" * len(columns)] + [_cells(r) for r in rows]


def run_diff_markdown(diff: dict[str, Any] | None, run_id: str, recipe: str) -> str:
    """The run-diff artifact: rows per stage, the changes, mixture, shards, evaluation and the
    first changed example ids. `diff` None: no earlier completed run of the recipe.

    >>> print(run_diff_markdown(None, "b1", "demo"))
    # Changes in run `b1` — recipe `demo`
    <BLANKLINE>
    No earlier completed run of recipe `demo` to compare with.
    """
    lines = [f"# Changes in run `{run_id}` — recipe `{recipe}`", ""]
    if diff is None:
        return "\n".join(lines + [f"No earlier completed run of recipe `{recipe}` to compare with."])
    a, n = diff["run_a"]["run_id"], diff["rows"]
    tables = diff_tables(diff, compact=True)
    lines += [f"Against `{a}` (A), the previous completed run of the recipe; B is this run. "
              f"`sftflow diff {a} {run_id} --rows` lists every changed row.", "",
              f"Rows read {n['n_read_a']} → {n['n_read_b']}: {n['n_added']} added, {n['n_removed']} removed, "
              f"{n['n_fate_changed']} with another fate, {n['n_text_changed']} with other text.", "",
              "## Rows dropped per stage", ""] + _markdown_table(*tables["stages"])
    lines += ["", "## Changed rows by stage (fate in A → fate in B)", ""]
    lines += _markdown_table(*tables["changes"]) if tables["changes"][1] else ["No row's fate changed."]
    lines += ["", "## Mixture", ""] + (_markdown_table(*tables["mixture"]) if tables["mixture"][1] else ["No mix."])
    lines += ["", "## Shards", ""] + _shard_lines(diff["shards"]) + ["", "## Evaluation", ""]
    lines += [diff["evals"]["note"]] if diff["evals"]["note"] else []
    lines += _markdown_table(*tables["evals"]) if tables["evals"][1] else []
    rows = diff.get("changed_rows") or []
    if rows:
        lines += ["", f"## Changed rows (the first {len(rows)} of {n['n_changed_rows']})", ""]
        lines += [f"- `{r['example_id']}` {r['source']} row {r['source_row']}: {r['in_a']} → {r['in_b']}"
                  + (" (text edited)" if r["text_changed"] else "") for r in rows]
    return "\n".join(lines)


def _shard_lines(shards: dict[str, Any]) -> list[str]:
    """The run-diff artifact's shard section: the counts, then one line per changed shard (the
    first RUN_DIFF_SHARDS).

    >>> print("\\n".join(_shard_lines({"n_unchanged": 8, "changed": [
    ...     {"shard": "shards/train/code-00000.parquet", "split": "train", "category": "code", "rows_a": 80,
    ...      "rows_b": 80, "n_only_a": 5, "n_only_b": 5},
    ...     {"shard": "shards/train/qa-00001.parquet", "split": "train", "category": "qa", "rows_a": None,
    ...      "rows_b": 12, "n_only_a": 0, "n_only_b": 12}]})))
    2 changed, 8 unchanged.
    <BLANKLINE>
    - `shards/train/code-00000.parquet` (train, code): 80 → 80 rows, 5 only in A, 5 only in B
    - `shards/train/qa-00001.parquet` (train, qa): only in B, 12 rows
    """
    changed = shards["changed"]
    if not changed:
        return [f"No shard changed, {shards['n_unchanged']} unchanged."]
    lines = [f"{len(changed)} changed, {shards['n_unchanged']} unchanged.", ""]
    for s in changed[:RUN_DIFF_SHARDS]:
        head = f"- `{s['shard']}` ({s['split']}, {s['category']}): "
        if s["rows_a"] is None or s["rows_b"] is None:
            side, n = ("B", s["rows_b"]) if s["rows_a"] is None else ("A", s["rows_a"])
            lines.append(head + f"only in {side}, {n} row{'' if n == 1 else 's'}")
        else:
            lines.append(head + f"{s['rows_a']} → {s['rows_b']} rows, {s['n_only_a']} only in A, "
                         f"{s['n_only_b']} only in B")
    if len(changed) > RUN_DIFF_SHARDS:
        lines.append(f"- and {len(changed) - RUN_DIFF_SHARDS} more")
    return lines
