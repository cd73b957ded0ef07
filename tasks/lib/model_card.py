"""MODEL_CARD.md: what the model is, what it was trained on, how, and what was checked.

Pure rendering: `render_model_card(data_card, train_summary)` turns two small dicts into markdown.

`data_card` (passed by the flow as the train call's `params["data_card"]`; every key optional):
```
{"recipe": {"name": "demo", "hash": "ab12..."},
 "sources": [{"name", "format", "path" | "hf_dataset", "license", "origin", "n_rows"}],
 "drops": [{"stage", "reason", "n"}]            # or {stage: {reason: n}}
 "mixture": [{"category", "target_share", "realized_share", "n_rows", "n_unique", "n_eval"}],
 "artifacts": [{"stage", "key", "sha256"}]      # or {stage: key}
}
```
`train_summary` is built by tasks/train.py: base_model, method, lora, template_origin, max_length,
packing, device, attn_implementation, sft (SFTConfig kwargs), metrics (metrics.json), mask_audit
(summary numbers), roundtrip, n_train_rows, n_eval_rows.
"""

from __future__ import annotations

from typing import Any

from sftflow.tasks.core import stages

BUILTIN_NOTE = (
    "**This is a demonstration model.** `builtin:tiny-llama` is a small randomly initialised Llama "
    "with a tokenizer trained on this run's own training split; it exists so the pipeline runs "
    "offline. Its outputs are not useful text; the card documents the pipeline, not a capability."
)
SFT_KEYS_SHOWN = ("learning_rate", "lr_scheduler_type", "warmup_steps", "num_train_epochs", "max_steps",
                  "per_device_train_batch_size", "gradient_accumulation_steps", "weight_decay", "max_length",
                  "packing", "packing_strategy", "bf16", "seed")
SFT_LABELS = {"warmup_steps": "warmup (share of steps when < 1)", "max_length": "max_length (tokens)"}


def _fmt(value: Any) -> str:
    """Compact cell text: floats to 4 significant digits, None as an em dash, pipes escaped.

    >>> _fmt(0.123456), _fmt(None), _fmt(3), _fmt("a|b")
    ('0.1235', '—', '3', 'a\\\\|b')
    """
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def _share(value: Any) -> str:
    return "—" if value is None else f"{100 * float(value):.1f}%"


def _table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_fmt(cell) for cell in row) + " |" for row in rows]
    return lines


def _drop_rows(drops: Any) -> list[list[Any]]:
    """[stage, reason, n] rows from either accepted shape, in the pipeline's stage order."""
    if isinstance(drops, dict):
        rows = [[stage, reason, n] for stage, reasons in drops.items() for reason, n in (reasons or {}).items()]
    else:
        rows = [[d.get("stage"), d.get("reason"), d.get("n")] for d in drops or []]
    order = list(stages.data_stages())
    return sorted(rows, key=lambda r: (order.index(r[0]) if r[0] in order else len(order), str(r[0]), str(r[1])))


def _artifact_rows(artifacts: Any) -> list[list[Any]]:
    if isinstance(artifacts, dict):
        return [[stage, key, None] for stage, key in artifacts.items()]
    return [[a.get("stage"), a.get("key"), a.get("sha256")] for a in artifacts or []]


def render_model_card(data_card: dict[str, Any], train_summary: dict[str, Any]) -> str:
    """Markdown model card from the data card (sources, drops, mixture, hashes) and the training summary."""
    t = train_summary
    metrics = t.get("metrics") or {}
    audit = t.get("mask_audit") or {}
    roundtrip = t.get("roundtrip") or {}
    recipe = data_card.get("recipe") or {}
    base = t.get("base_model", "unknown")
    lines = [f"# {recipe.get('name', 'sftflow')} — SFT of `{base}`", ""]
    if str(base).startswith("builtin:"):
        lines += [BUILTIN_NOTE, ""]
    method = t.get("method", "full")
    lines += [
        f"Supervised fine-tuning ({'LoRA adapter' if method == 'lora' else 'full fine-tuning'}) with TRL's "
        "SFTTrainer, loss on assistant tokens only, produced by the sftflow pipeline"
        + (f" from recipe `{recipe['name']}` (hash `{recipe.get('hash', '—')}`)." if recipe.get("name") else "."),
        "",
        "## Intended use and limits",
        "- A chat model for the formats and categories of the training mixture below; it inherits the "
        "base model's knowledge, biases and license terms, and the training data's.",
        "- Not evaluated for safety beyond the pipeline's toxicity filter; do not deploy unreviewed.",
        f"- Prompt it with the saved chat template (`{t.get('template_origin', '—')}`), which is the one it "
        "was trained with (checked byte for byte after saving).",
        "",
    ]

    lines += ["## Training data", ""]
    sources = data_card.get("sources") or []
    if sources:
        lines += _table(["source", "format", "location", "origin", "license", "rows read"],
                        [[s.get("name"), s.get("format"), s.get("path") or s.get("hf_dataset"), s.get("origin"),
                          s.get("license"), s.get("n_rows")] for s in sources]) + [""]
    else:
        lines += ["No data card was passed to the train stage: see the catalog for sources.", ""]
    drops = _drop_rows(data_card.get("drops"))
    if drops:
        lines += ["Rows removed before training (every drop has a reason in the catalog's `decisions`):", ""]
        lines += _table(["stage", "reason", "rows"], drops) + [""]
    mixture = data_card.get("mixture") or []
    if mixture:
        lines += ["Realized mixture of the train split:", ""]
        lines += _table(["category", "target share", "realized share", "train rows", "unique", "eval rows"],
                        [[m.get("category"), _share(m.get("target_share")), _share(m.get("realized_share")),
                          m.get("n_rows"), m.get("n_unique"), m.get("n_eval")] for m in mixture]) + [""]
    lines += [f"Train rows: {_fmt(t.get('n_train_rows'))}; held-out eval rows: {_fmt(t.get('n_eval_rows'))}.", ""]

    sft = t.get("sft") or {}
    lines += ["## Training procedure", ""]
    procedure = [["base model", base], ["method", method], ["chat template", t.get("template_origin")],
                 ["device", t.get("device")], ["attention", t.get("attn_implementation")]]
    if method == "lora" and t.get("lora"):
        lora = t["lora"]
        procedure.append(["LoRA", f"r={lora.get('r')}, alpha={lora.get('alpha')}, dropout={lora.get('dropout')}, "
                                  f"targets={lora.get('target_modules')}"])
    procedure += [[SFT_LABELS.get(key, key), sft[key]] for key in SFT_KEYS_SHOWN if key in sft]
    lines += _table(["setting", "value"], procedure) + [""]

    lines += ["## Checks", ""]
    lines += _table(["check", "result"], [
        ["supervised token share", _share(audit.get("supervised_token_share"))],
        ["examples with no supervised token", audit.get("n_zero_supervised")],
        ["supervised tokens outside assistant turns", audit.get("non_assistant_supervised")],
        ["end-of-turn token supervised", audit.get("end_of_turn_supervised")],
        ["examples truncated to max_length", audit.get("n_truncated")],
        ["template round trip on the saved folder", roundtrip.get("ok")],
        ["train rows re-rendered in the round trip", roundtrip.get("n_rows_checked")],
    ]) + [""]

    lines += ["## Training run", ""]
    lines += _table(["metric", "value"], [
        ["optimizer steps", metrics.get("global_step")],
        ["first / last logged loss", f"{_fmt(metrics.get('first_logged_loss'))} / {_fmt(metrics.get('last_logged_loss'))}"],
        ["runtime (s)", metrics.get("train_runtime_s")],
        ["tokens processed (non-pad)", metrics.get("tokens_processed")],
        ["tokens per second", metrics.get("tokens_per_second")],
        ["peak memory (MiB)", None if metrics.get("peak_memory_bytes") is None
         else metrics["peak_memory_bytes"] / 2**20],
        ["resumed from checkpoint", metrics.get("resumed_from_checkpoint")],
    ]) + ["", "Loss, learning rate and grad norm per step: `training.png`, `log_history.json`.", ""]

    artifacts = _artifact_rows(data_card.get("artifacts"))
    if artifacts:
        lines += ["## Reproducibility", "", "Input artifacts (content-addressed; lineage in the catalog):", ""]
        lines += _table(["stage", "key", "sha256"], artifacts) + [""]
    return "\n".join(lines)


def toxicity_card(filter_stats: dict[str, Any] | None) -> dict[str, Any] | None:
    """The data card's toxicity entry from the filter stage's stats (None when it did not score).

    >>> toxicity_card({"toxicity_scorer": "profanity-check@1", "toxicity_window": "sentence",
    ...                "toxicity_unjudged_rows": 2, "toxicity_unjudged_rows_kept": 2,
    ...                "toxicity_unjudged_by_script": {"Han": 2}})["unjudged_by_script"]
    {'Han': 2}
    """
    if not filter_stats or not filter_stats.get("toxicity_scorer"):
        return None
    return {"scorer": filter_stats["toxicity_scorer"], "window": filter_stats.get("toxicity_window"),
            "unjudged_rows": filter_stats.get("toxicity_unjudged_rows", 0),
            "unjudged_rows_kept": filter_stats.get("toxicity_unjudged_rows_kept", 0),
            "unjudged_by_script": filter_stats.get("toxicity_unjudged_by_script") or {}}


def _toxicity_lines(toxicity: dict[str, Any] | None) -> list[str]:
    """What the toxicity filter could and could not judge (rows in scripts its model does not read)."""
    if not toxicity:
        return []
    lines = ["## Toxicity", "", f"Scored by `{toxicity.get('scorer')}`, max over {toxicity.get('window')} windows."]
    n = toxicity.get("unjudged_rows") or 0
    if n:
        by_script = sorted((toxicity.get("unjudged_by_script") or {}).items())
        scripts = ", ".join(f"{name} {count}" for name, count in by_script)
        lines.append(
            f"**{n} rows were not fully judged**: turns in scripts the toxicity model does not read "
            f"(rows by script: {scripts}). They are not scored as clean: such a row is kept unless another check drops it "
            f"({toxicity.get('unjudged_rows_kept', 0)} were kept), with `toxicity_unjudged` in its filter "
            "decision's detail. For such data use detoxify's `multilingual` model (en, fr, es, it, pt, tr, ru) or a "
            "checkpoint for the language.")
    else:
        lines.append("Every judged turn was in a script the toxicity model reads.")
    return lines + [""]


def render_data_card(data_card: dict[str, Any]) -> str:
    """Markdown data card of one run: sources, the ledger, drops by reason, mixture, artifact hashes.

    `data_card` is the dict described at the top of this module, plus `ledger`
    ([{stage, n_in, n_kept, n_dropped}]), `run_id`, `overrides` and `code_version` when known.
    """
    recipe = data_card.get("recipe") or {}
    lines = [f"# Data card — recipe `{recipe.get('name', '—')}`, run `{data_card.get('run_id', '—')}`", "",
             f"Recipe hash `{recipe.get('hash', '—')}`; code version `{data_card.get('code_version', '—')}`; "
             f"overrides: {', '.join(f'`{o}`' for o in data_card.get('overrides') or []) or 'none'}.", ""]
    lines += ["## Sources", ""]
    lines += _table(["source", "format", "location", "origin", "license", "rows read"],
                    [[s.get("name"), s.get("format"), s.get("path") or s.get("hf_dataset"), s.get("origin"),
                      s.get("license"), s.get("n_rows")] for s in data_card.get("sources") or []]) + [""]
    ledger = data_card.get("ledger") or []
    if ledger:
        lines += ["## Ledger", "", "Every row a stage received was kept or dropped with a reason "
                  "(rows in = kept + dropped):", ""]
        lines += _table(["stage", "rows in", "kept", "dropped"],
                        [[r.get("stage"), r.get("n_in"), r.get("n_kept"), r.get("n_dropped")] for r in ledger]) + [""]
    drops = _drop_rows(data_card.get("drops"))
    if drops:
        lines += ["## Drops by reason", ""] + _table(["stage", "reason", "rows"], drops) + [""]
    lines += _toxicity_lines(data_card.get("toxicity"))
    mixture = data_card.get("mixture") or []
    if mixture:
        lines += ["## Mixture (train split)", ""]
        lines += _table(["category", "target share", "realized share", "train rows", "unique", "eval rows"],
                        [[m.get("category"), _share(m.get("target_share")), _share(m.get("realized_share")),
                          m.get("n_rows"), m.get("n_unique"), m.get("n_eval")] for m in mixture]) + [""]
    artifacts = _artifact_rows(data_card.get("artifacts"))
    if artifacts:
        lines += ["## Artifacts", "", "Content-addressed; `sftflow explain EXAMPLE_ID` and "
                  "`sftflow lineage MODEL_ID` follow rows through them.", ""]
        lines += _table(["stage", "key", "sha256"], artifacts) + [""]
    return "\n".join(lines)
