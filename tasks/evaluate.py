"""Evaluate a tuned model against its base: held-out loss, general perplexity, generations, IF checks.

What is measured, and why (how each is computed: `sftflow.tasks.lib.lm_metrics`; the gate, the metric rows
and report.md: `sftflow.tasks.lib.eval_report`; loading the models and reading the inputs:
`sftflow.tasks.lib.eval_inputs`):

- **Held-out loss** (`heldout_loss`, `heldout_loss_base`): cross-entropy on the assistant tokens of
  the mix stage's eval split, tokenized as training does: the training objective on unseen rows,
  comparable with the training loss curve.
- **General perplexity** (`general_ppl`, `general_ppl_base`) on the plain texts of
  eval.general_text: a rise over the base model signals forgetting. `regressed` is set when
  tuned > base * (1 + eval.regression_tolerance), and is None when no general text was given.
- **Gate** (`gate` in the result, report.json and the stage stats): general and held-out
  perplexity, each failing past that tolerance. The flow decides what a gated model does to the
  run (eval.on_regression), so that setting is in no key (`UNKEYED`).
- **Instruction following** (`if_prompt_acc`, `if_instruction_acc`, plus `_base`): greedy
  generations for the built-in `sftflow.tasks.lib.ifeval.IF_PROMPTS`, scored by the programmatic checks.
  The set is fixed, so these numbers compare across runs and recipes; the prompts of
  `eval.prompts` are generated and saved too, for reading, but not scored. Answers cut at
  eval.max_new_tokens and empty ones fail every check and are counted per model.
- **Mask audit** (`mask_supervised_token_share`, `mask_zero_supervised_examples`): copied from the
  train stage's audit, so every number about a model sits in one `evals` table.
- **Judge** (`judge_score_mean`, `judge_score_mean_base`): only when `eval.judge.enabled`.

Base and tuned are measured one after the other, in one precision that the device picks
(`eval_precision`): the device is part of the key.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from sftflow.tasks.core.artifacts import Manifest
from sftflow.tasks.core.hashing import sha256_file
from sftflow.tasks.core.mix_shards import EVAL, shard_files
from sftflow.tasks.core.recipe import Recipe
from sftflow.tasks.core.recipe_training import EvalConfig, JudgeConfig
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.records import DECISION_SCHEMA, RECORD_SCHEMA, StageOutput
from sftflow.tasks.core.stage import StageCall, plan_call, stage_task
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.devices import check_device, compute_device
from sftflow.tasks.lib.eval_inputs import base_then_tuned, eval_precision, load_prompts, read_texts
from sftflow.tasks.lib.eval_report import (
    gate_report,
    gate_summary,
    general_regressed,
    generation_counts,
    generation_rows,
    if_metrics,
    if_scores,
    loss_metrics,
    mask_metrics,
    metric,
    model_generation_counts,
    render_report,
)
from sftflow.tasks.lib.ifeval import IF_PROMPTS
from sftflow.tasks.lib.judge import check_judge_reachable, judge_generations
from sftflow.tasks.lib.lm_metrics import measure_model

OUTPUT_FILES = ("report.json", "report.md", "generations.json")


# ------------------------------------------------------------------------------------ model --
def evaluate_model(tuned_dir: Path, base_location: str | Path, template: str, eval_rows: list[dict],
                   general_texts: list[str], cfg: EvalConfig, max_length: int, out_dir: Path,
                   mask_audit: dict | None = None, prompts: list[str] | None = None,
                   base_revision: str | None = None, device: str | None = None) -> dict[str, Any]:
    """Measure base and tuned, write report.json, report.md and generations.json into out_dir.

    `prompts`: extra prompts to generate (already read); when None and eval.prompts is set, that
    JSONL is read as given (the stage resolves it inside the workspace first).
    Returns {"metrics": [{metric, value, detail}], "report_md": str, "regressed": bool | None (None:
    no general text measured), "gate": gate_report(...), "eval_dtype": str, "eval_device": str}.
    """
    tuned_dir, out_dir = Path(tuned_dir), Path(out_dir)
    check_judge_reachable(cfg.judge)  # an enabled but unusable judge fails before any model loads
    if prompts is None and cfg.prompts:
        prompts = load_prompts(Path(cfg.prompts))
    items = [{"id": p["id"], "prompt": p["prompt"], "checks": p["checks"]} for p in IF_PROMPTS]
    items += [{"id": f"prompt-{i + 1:03d}", "prompt": text, "checks": []} for i, text in enumerate(prompts or [])]
    texts = list(general_texts)[: cfg.max_general_texts]
    dtype, device = eval_precision(check_device(device))

    measured = _measure_base_then_tuned(tuned_dir, base_location, base_revision, (dtype, device), template,
                                        eval_rows, texts, [i["prompt"] for i in items], cfg, max_length)

    base, tuned = measured["base"], measured["tuned"]
    gate = gate_report(cfg.regression_tolerance, tuned.get("general_ppl"), base.get("general_ppl"),
                       tuned.get("heldout_loss"), base.get("heldout_loss"))
    regressed = general_regressed(gate)
    metrics, skipped = loss_metrics(gate, measured, len(eval_rows), len(texts), max_length)
    if_eval = if_scores(items, measured)
    metrics += if_metrics(if_eval, measured, cfg.max_new_tokens)
    if mask_audit:
        metrics.extend(mask_metrics(mask_audit))
    generations = generation_rows(items, measured, if_eval)
    if cfg.judge.enabled:
        metrics += _judge(cfg.judge, generations)

    report = {
        "tuned": str(tuned_dir), "base": str(base_location), "regressed": regressed, "gate": gate,
        "eval_dtype": dtype, "eval_device": device, "metrics": metrics, "skipped": skipped,
        "generation_counts": generation_counts(measured), "if_eval": if_eval, "max_length": max_length,
        # on_regression is the flow's decision about this report, not part of what was measured
        "eval": {k: v for k, v in cfg.canonical().items() if k != "on_regression"},
    }
    report_md = render_report(report, generations)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(report_md, encoding="utf-8")
    (out_dir / "generations.json").write_text(json.dumps(generations, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"[evaluate] gate: {gate_summary(gate)}")
    return {"metrics": metrics, "report_md": report_md, "regressed": regressed, "gate": gate,
            "eval_dtype": dtype, "eval_device": device}


def _measure_base_then_tuned(tuned_dir: Path, base_location: str | Path, base_revision: str | None,
                             precision: tuple[str, str], template: str, eval_rows: list[dict], texts: list[str],
                             prompts: list[str], cfg: EvalConfig, max_length: int) -> dict[str, dict[str, Any]]:
    """{"base": measure_model(...), "tuned": ...}, one model loaded at a time; a log line per model."""
    dtype, device = precision
    print(f"[evaluate] base and tuned in {dtype} on {device}: {len(eval_rows)} held-out rows, {len(texts)} general "
          f"texts, {len(prompts)} prompts at up to {cfg.max_new_tokens} new tokens")
    measured: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for label, model, tokenizer in base_then_tuned(tuned_dir, base_location, base_revision, precision):
        measured[label] = measure_model(model, tokenizer, template, eval_rows, texts, prompts, max_length,
                                        cfg.batch_size, cfg.max_new_tokens)
        del model  # lets the generator free a full base model before loading the tuned one
        print(_summary_line(label, measured[label], len(eval_rows), time.perf_counter() - started))
        started = time.perf_counter()  # the next model's time includes its loading
    return measured


def _summary_line(label: str, measured: dict[str, Any], n_rows: int, seconds: float) -> str:
    """One log line per model: what was measured and how long loading and measuring took."""
    parts = []
    if measured.get("heldout_loss") is not None:
        parts.append(f"held-out loss {measured['heldout_loss']:.3f} on {n_rows} rows")
    if measured.get("general_ppl") is not None:
        parts.append(f"general ppl {measured['general_ppl']:.1f}")
    counts = model_generation_counts(measured)
    parts.append(f"{counts['n_generations']} generations ({counts['n_truncated']} truncated, {counts['n_empty']} empty)")
    return f"[evaluate] {label}: {', '.join(parts)} in {seconds:.1f} s"


def _judge(judge: JudgeConfig, generations: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Judge scores written into the generation rows, and a mean score row per model with any score."""
    metrics = []
    for label in ("tuned", "base"):
        judged = judge_generations(judge, [{"prompt": g["prompt"], "response": g[label]} for g in generations])
        for g, j in zip(generations, judged):
            g[f"judge_score_{label}"] = j["judge_score"]
        scores = [j["judge_score"] for j in judged if j["judge_score"] is not None]
        if scores:
            metrics.append(metric("judge_score_mean" + ("" if label == "tuned" else "_base"), sum(scores) / len(scores),
                                  {"judge_model": judge.model, "n_scored": len(scores), "n_items": len(judged)}))
    return metrics


# ------------------------------------------------------------------------------ stage output --
def evaluate_stage_output(result: dict[str, Any], out_dir: Path, model_id: str) -> StageOutput:
    """The evaluate stage's output: no records or decisions, the three report files, metrics in stats."""
    out_dir = Path(out_dir)
    files = {name: out_dir / name for name in OUTPUT_FILES}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise FileNotFoundError(f"evaluate: {', '.join(missing)} missing in {out_dir}; run evaluate_model with out_dir={out_dir} first")
    return StageOutput(
        records=RECORD_SCHEMA.empty_table(),
        decisions=DECISION_SCHEMA.empty_table(),
        files=files,
        stats={"model_id": model_id, "metrics": result["metrics"], "regressed": result["regressed"],
               "gate": result.get("gate"), "eval_dtype": result.get("eval_dtype"), "eval_device": result.get("eval_device")},
    )


# ------------------------------------------------------------------------------------ plan --
LIBRARIES = ("transformers", "torch", "peft", "tokenizers")
# The decisions this stage may record (tasks/core/stage.py refuses any other reason).
REASONS: frozenset[Reason] = frozenset()  # it judges no rows
# Read by the flow after evaluate: what a tripped gate does to the run, not what is measured.
UNKEYED = ("eval.on_regression",)


def plan(recipe: Recipe, trained: Manifest, mixed: Manifest, ws: Workspace) -> StageCall:
    """The call on the train artifact and the mix artifact (its eval split), keyed by the eval files."""
    config = {"eval": recipe.eval.canonical(), "max_length": recipe.train.max_length}
    external = {f"eval.{field} file": sha256_file(ws.resolve_input(path))
                for field, path in (("general_text", recipe.eval.general_text), ("prompts", recipe.eval.prompts)) if path}
    # The device picks the precision both models are measured in (eval_precision): a verdict
    # measured in fp32 on CPU is no cache hit for a bf16 run on a GPU.
    device = compute_device()
    external["device"] = f"device={device}"
    return plan_call(sys.modules[__name__], config, [trained, mixed], ws, extra_input_hashes=external,
                     params={"device": device})


# --------------------------------------------------------------------------- Prefect wrapper --
@stage_task("evaluate")
def evaluate_stage(call: StageCall) -> StageOutput:
    """Inputs: the train artifact, then the mix artifact (its eval shards)."""
    import shutil

    from sftflow.tasks.core.artifacts import read_tables

    cfg = EvalConfig.model_validate(call.config["eval"])
    trained, mixed = call.inputs
    ws = call.workspace
    eval_shards = shard_files(mixed, EVAL)
    eval_rows = read_tables(eval_shards).select(["example_id", "messages"]).to_pylist() if eval_shards else []
    general = read_texts(ws.resolve_input(cfg.general_text), cfg.max_general_texts) if cfg.general_text else []
    prompts = load_prompts(ws.resolve_input(cfg.prompts)) if cfg.prompts else None
    base_folder = trained.file("base_model")
    # The base the train stage really loaded: its confined local folder or hub id (not the raw
    # recipe string, which would resolve against the working directory).
    base = base_folder if base_folder.is_dir() else trained.stats["model"]["base_location"]
    audit_path = trained.file("mask_audit.json")
    out_dir = call.work_dir
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    result = evaluate_model(
        trained.file("model"), base, trained.file("chat_template.jinja").read_text(encoding="utf-8"),
        eval_rows, general, cfg, call.config["max_length"], out_dir,
        mask_audit=json.loads(audit_path.read_text(encoding="utf-8")) if audit_path.is_file() else None,
        prompts=prompts,
        base_revision=None if base_folder.is_dir() else trained.stats["model"].get("revision"),
        device=call.params.get("device"),
    )
    return evaluate_stage_output(result, out_dir, model_id=trained.key)
