"""Train: TRL's SFTTrainer on the mixed train shards, in its own process, checked before and after.

```
mix shards ─► base model + tokenizer ─► chat template ─► mask audit ─► job.json
           ─► accelerate launch -m sftflow.tasks.lib.train_worker ─► round-trip check ─► plot, config, card
```

Choices this stage makes (and why):

- **Training runs in a child process** (tasks/lib/train_launch.py): an OOM kill or a CUDA crash
  fails this task with the tail of the training log, never the flow process, and
  `train.num_processes` GPUs work the same way. Every line of the process goes to
  `reports/train.log`; only its `[train] ...` lines are echoed.
- **Every train row gets a decision** (one per example_id; upsampled copies share it): rows that
  truncation to max_length leaves without a supervised token are dropped as
  `no_supervised_tokens` (TRL would drop them silently, or train on them with no loss when
  packing) and the worker never sees them, so the catalog's lineage lists exactly the rows
  trained on. Rows with no supervised token even untruncated are a template problem: they stay
  and the audit stops the run.
- **Masks are audited before launching** (tasks/lib/mask_audit.py): a template that supervises
  nothing, supervises prompts, or never the end-of-turn token stops the stage with an actionable
  error and `mask_audit.json` in the work folder, instead of an hour of training on the wrong
  tokens. The audit covers at most AUDIT_MAX_ROWS rows (a seeded sample) to bound its cost.
- **The round trip is checked on the saved folder** (tasks/lib/train_checks.py): a model folder
  that would be prompted differently from how it was trained is never handed on.
- **Work folder, resumable**: `data/warehouse/work/train/<key>/` holds `base/` (builtin model),
  `job.json`, `checkpoints/`, `output/` and `reports/`. It is keyed like the artifact, so a
  retried or re-run task resumes from the newest checkpoint. The checkpoints stay there after
  the artifact is committed (the artifact gets the final model, not the optimizer state); the
  next train run deletes work folders whose artifact exists (`prune_finished_work`).
- **Defaults** (learning rate, packing, bf16, attention kernel): tasks/lib/train_settings.py.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from sftflow.tasks.core.artifacts import ArtifactStore, Manifest
from sftflow.tasks.core.hashing import sha256_file, sha256_tree
from sftflow.tasks.core.mix_shards import EVAL, TRAIN, shard_files
from sftflow.tasks.core.recipe import Recipe
from sftflow.tasks.core.recipe_training import TrainConfig
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.records import DecisionLog, StageOutput, empty_records
from sftflow.tasks.core.stage import StageCall, plan_call, stage_task
from sftflow.tasks.core.weights import require_safetensors
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.base_model import load_tokenizer, model_location
from sftflow.tasks.lib.chat_template import select_chat_template
from sftflow.tasks.lib.devices import check_device, compute_device
from sftflow.tasks.lib.mask_audit import audit_masks, check_audit
from sftflow.tasks.lib.model_card import render_model_card
from sftflow.tasks.lib.tiny_model import BUILTIN_TINY_LLAMA, build_tiny_llama, conversation_texts
from sftflow.tasks.lib.train_checks import (
    audit_sample,
    audit_summary,
    require_roundtrip,
    roundtrip_check,
    sample_rows,
    supervision_decisions,
)
from sftflow.tasks.lib.train_launch import TrainingFailed  # noqa: F401 (the flow catches it as sftflow.tasks.train.TrainingFailed)
from sftflow.tasks.lib.train_launch import launch_command, run_logged
from sftflow.tasks.lib.train_plot import plot_training
from sftflow.tasks.lib.train_settings import attn_implementation, sft_kwargs
from sftflow.tasks.lib.train_worker import (
    CHAT_TEMPLATE_FILE,
    LOG_HISTORY_FILE,
    METRICS_FILE,
    TRAINED_SEQUENCES_FILE,
    TrainJob,
)

LIBRARIES = ("trl", "transformers", "peft", "accelerate", "torch", "tokenizers", "datasets")
# The decisions this stage may record (tasks/core/stage.py refuses any other reason).
REASONS = frozenset({Reason.KEPT, Reason.NO_SUPERVISED_TOKENS})

SHARD_COLUMNS = ("example_id", "category", "source", "messages")
AUDIT_MAX_ROWS = 5000  # the audit renders growing prefixes per row: bounded cost on big mixes
ROUNDTRIP_ROWS = 32  # train rows re-rendered after saving (at least MIN_ROUNDTRIP_ROWS when there are)
MIN_ROUNDTRIP_ROWS = 20
TRAINING_ARGS_FILE = "training_args.bin"  # transformers.trainer.TRAINING_ARGS_NAME


# ---------------------------------------------------------------------------------- inputs --
def read_shard_rows(paths: list[Path]) -> list[dict[str, Any]]:
    """messages, category, source, example_id of every row of the shards (copies kept)."""
    rows: list[dict[str, Any]] = []
    for path in paths:
        names = pq.read_schema(path).names
        missing = [c for c in SHARD_COLUMNS if c not in names]
        if missing:
            raise ValueError(f"train: shard {path} lacks columns {missing}; it must come from the mix stage")
        rows.extend(pq.read_table(path, columns=list(SHARD_COLUMNS)).to_pylist())
    return rows


# ------------------------------------------------------------------------------------ main --
def run_training(call: StageCall, echo: bool = True) -> StageOutput:
    """The stage, step by step; see the module docstring."""
    cfg = TrainConfig.model_validate(call.config)
    if not call.inputs:
        raise ValueError("train: needs the mix artifact as its input")
    work, reports, output_dir = _work_folder(call)

    # Inputs: the mix's shards, and where training runs.
    mix = call.inputs[0]
    train_files, eval_files = shard_files(mix, TRAIN), shard_files(mix, EVAL)
    if not train_files:
        raise ValueError(f"train: the mix artifact {mix.path} has no train shards; check mix.total_rows and shares")
    train_rows = read_shard_rows(train_files)
    device = _training_device(cfg, call.params.get("device"))

    # Before training: base model and template, every row's decision, the mask audit.
    location, tokenizer, template, template_origin = _base_model_and_template(cfg, train_rows, work, call, reports)
    decisions, dropped, trained_rows, audit = _decide_and_audit(cfg, train_rows, tokenizer, template, reports)

    # The job: everything the training process needs, written where a retry finds it.
    builtin = cfg.model == BUILTIN_TINY_LLAMA
    kwargs = sft_kwargs(cfg, device, float(audit["mean_tokens"]), has_eval=bool(eval_files))
    attention = attn_implementation(cfg, device)
    roundtrip_rows = sample_rows(trained_rows, max(ROUNDTRIP_ROWS, MIN_ROUNDTRIP_ROWS), cfg.seed, "train-roundtrip")
    job = TrainJob(
        base_model=location, revision=None if builtin else cfg.revision, trust_remote_code=cfg.trust_remote_code,
        chat_template=template, train_files=[str(p) for p in train_files], eval_files=[str(p) for p in eval_files],
        checkpoint_dir=str(work / "checkpoints"), output_dir=str(output_dir), method=cfg.method, lora=cfg.lora,
        sft=kwargs, attn_implementation=attention, sample_ids=[r["example_id"] for r in roundtrip_rows],
        exclude_example_ids=sorted(dropped),
    )
    job_path = job.write(work / "job.json")

    # Launch: the training process, every line of it in reports/train.log.
    accelerate_config = call.params.get("accelerate_config")
    command = launch_command(job_path, cfg.num_processes, use_cpu=device == "cpu",
                             config_file=Path(accelerate_config) if accelerate_config else None)
    run_logged(command, Path(call.root), reports / "train.log", echo=echo)

    # After training: the round trip on the saved folder, then plot, config and card.
    roundtrip = _check_round_trip(call, cfg, output_dir, reports, roundtrip_rows, template, kwargs["packing"])

    log_history, metrics = _collect_reports(output_dir, reports)
    plot_training(log_history, reports / "training.png")
    config_record = {
        "recipe_train": cfg.canonical(), "sft_config": kwargs, "template_origin": template_origin,
        "attn_implementation": attention, "device": device, "base_model": cfg.model,
        "base_model_location": location if not builtin else "base_model/", "launch": command[1:],
    }
    (reports / "training_config.yaml").write_text(yaml.safe_dump(config_record, sort_keys=False), encoding="utf-8")
    summary = audit_summary(audit)
    train_summary = {
        "base_model": cfg.model, "method": cfg.method, "lora": cfg.lora.canonical() if cfg.method == "lora" else None,
        "template_origin": template_origin, "max_length": cfg.max_length, "packing": kwargs["packing"],
        "device": device, "attn_implementation": attention, "sft": kwargs, "metrics": metrics,
        "mask_audit": summary, "roundtrip": {k: roundtrip[k] for k in ("ok", "n_rows_checked", "template_byte_identical")},
        "n_train_rows": len(trained_rows), "n_eval_rows": mix.stats.get("n_eval_rows"),
    }
    (reports / "MODEL_CARD.md").write_text(render_model_card(call.params.get("data_card") or {}, train_summary),
                                           encoding="utf-8")

    # The stage output: the model (and built base), the reports, a decision per train example.
    files = {"model": output_dir}
    if builtin:
        files["base_model"] = work / "base"
    for name in ("mask_audit.json", "training_config.yaml", LOG_HISTORY_FILE, METRICS_FILE, "training.png",
                 "roundtrip.json", "MODEL_CARD.md", CHAT_TEMPLATE_FILE, TRAINED_SEQUENCES_FILE, "train.log"):
        files[name] = reports / name
    stats = {
        # the ledger counts distinct train examples: n_in = kept + dropped (no_supervised_tokens)
        "n_in": len(decisions),
        "n_out": len(decisions) - len(dropped),
        "n_train_rows": len(trained_rows),  # upsampled copies counted
        "n_dropped_no_supervised_tokens": len(dropped),
        "n_trained_sequences": int(roundtrip.get("n_trained_sequences") or 0),
        "model": {"base_model": cfg.model, "method": cfg.method, "path": "model",
                  # what evaluate loads as the base: the artifact's base_model/ for builtin models
                  "base_location": None if cfg.model.startswith("builtin:") else location,
                  "revision": cfg.revision},
        "mask_audit": summary,
        "train_metrics": metrics,
        "template_origin": template_origin,
        "packing": kwargs["packing"],
        "device": device,
        "attn_implementation": attention,
        "roundtrip_ok": roundtrip["ok"],
        "work_dir": str(work),
    }
    return StageOutput(records=empty_records(), decisions=decisions.to_table(), files=files, stats=stats)


# ----------------------------------------------------------------------------------- steps --
def _work_folder(call: StageCall) -> tuple[Path, Path, Path]:
    """The call's work folder (spent ones pruned), its fresh `reports/`, and `output/` emptied."""
    work = call.work_dir
    prune_finished_work(work.parent, call.store, keep=call.key)
    work.mkdir(parents=True, exist_ok=True)
    reports = _fresh(work / "reports")
    output_dir = work / "output"
    if output_dir.exists():
        shutil.rmtree(output_dir)
    return work, reports, output_dir


def _training_device(cfg: TrainConfig, planned: str | None) -> str:
    device = check_device(planned)
    if device == "cuda":
        import torch

        if cfg.num_processes > torch.cuda.device_count():
            raise ValueError(f"train.num_processes={cfg.num_processes} but only {torch.cuda.device_count()} "
                             "CUDA devices are visible; lower it")
    return device


def _base_model_and_template(cfg: TrainConfig, train_rows: list[dict[str, Any]], work: Path, call: StageCall,
                             reports: Path) -> tuple[str, Any, str, str]:
    """(location, tokenizer, template, template origin): the builtin model is built into `base/`,
    any other is where the plan located (and keyed) it; the template used is written to the reports."""
    workspace = call.workspace
    if cfg.model == BUILTIN_TINY_LLAMA:
        location = str(build_tiny_llama(conversation_texts(train_rows), cfg.tiny, cfg.seed, _fresh(work / "base")))
    else:
        # A call not made by `plan` locates the model now, as the plan would.
        location = call.params.get("base_location") or model_location(cfg.model, workspace)
        require_safetensors(location, "train.model")  # here, not after a launch and a retry in the worker
    tokenizer = load_tokenizer(location, cfg)
    template, template_origin = select_chat_template(tokenizer, cfg.chat_template, workspace.resolve_input)
    (reports / CHAT_TEMPLATE_FILE).write_bytes(template.encode("utf-8"))
    return location, tokenizer, template, template_origin


def _decide_and_audit(cfg: TrainConfig, train_rows: list[dict[str, Any]], tokenizer, template: str,
                      reports: Path) -> tuple[DecisionLog, set[str], list[dict[str, Any]], dict[str, Any]]:
    """(decisions, dropped ids, rows to train on, audit); a failed audit stops the stage here."""
    decisions, dropped = supervision_decisions(train_rows, tokenizer, template, cfg.max_length)
    trained_rows = [r for r in train_rows if r["example_id"] not in dropped]
    if dropped:
        print(f"[train] {len(dropped)} of {len(decisions)} train examples have no supervised token after "
              f"truncation to max_length={cfg.max_length}: dropped as no_supervised_tokens", flush=True)
    # The audit describes what the trainer will see; with every row dropped it describes them all,
    # and check_audit names the truncation problem.
    audit = audit_masks(audit_sample(trained_rows or train_rows, AUDIT_MAX_ROWS, cfg.seed), tokenizer, template,
                        cfg.max_length, cfg.min_content_supervised_share)
    audit["n_dropped_no_supervised_tokens"] = len(dropped)
    audit_path = _write_json(reports / "mask_audit.json", audit)
    try:
        check_audit(audit, cfg.min_content_supervised_share)
    except ValueError as exc:
        _publish_failed_audit(audit, str(exc))
        raise type(exc)(f"{exc} (full audit: {audit_path})") from None
    return decisions, dropped, trained_rows, audit


def _publish_failed_audit(audit: dict[str, Any], problem: str) -> None:
    """A failed audit stops the run before any artifact exists: show it in the Prefect UI anyway."""
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import TaskRunContext

    if TaskRunContext.get() is None:  # called outside a flow (tests, scripts): nothing to publish to
        return
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(audit_summary(audit).items()))
    content = audit.get("assistant_content_supervised") or {}
    below = ""
    if content.get("n_turns_below"):
        below = (f"Assistant turns with less than {content['threshold']:.0%} of their content supervised: "
                 f"{content['n_turns_below']} of {content['n_turns']} (lowest share {content['min_share']:.2f}; "
                 f"example ids: {', '.join(content.get('example_ids_below', []))})\n\n")
    create_markdown_artifact(
        key="sftflow-mask-audit-failed",
        markdown=f"## Mask audit failed\n\n{problem}\n\n| check | value |\n|---|---|\n{rows}\n\n{below}"
                 f"Marked example:\n\n```text\n{audit.get('example_marked', '')}\n```\n",
        description="the run stopped before training",
    )


def _check_round_trip(call: StageCall, cfg: TrainConfig, output_dir: Path, reports: Path,
                      rows: list[dict[str, Any]], template: str, packing: bool) -> dict[str, Any]:
    """roundtrip.json for the saved folder; raises RoundTripError (after writing it) when it fails."""
    adapter_config = output_dir / "adapter_config.json"
    if adapter_config.is_file() and cfg.model.startswith("builtin:"):
        # The adapter names the base folder it was trained on, which is about to move into the
        # artifact: point it at the base's final place so PEFT can load the pair.
        final_base = call.artifact_dir / "base_model"
        config = json.loads(adapter_config.read_text(encoding="utf-8"))
        config["base_model_name_or_path"] = str(final_base)
        adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True), encoding="utf-8")
    roundtrip = roundtrip_check(output_dir, rows, template, cfg.max_length, packing=packing)
    _write_json(reports / "roundtrip.json", roundtrip)
    require_roundtrip(roundtrip, output_dir)
    return roundtrip


def _collect_reports(output_dir: Path, reports: Path) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """(log history, metrics): the worker's JSON reports leave the model folder, which holds only
    what loading the model needs."""
    for name in (LOG_HISTORY_FILE, METRICS_FILE, TRAINED_SEQUENCES_FILE):
        shutil.move(str(output_dir / name), str(reports / name))
    # Trainer.save_model also writes training_args.bin, a pickled TrainingArguments that nothing
    # reads back: a pickle has no place in a result (docs/training.md, "What is pickled and why").
    (output_dir / TRAINING_ARGS_FILE).unlink(missing_ok=True)
    log_history = json.loads((reports / LOG_HISTORY_FILE).read_text(encoding="utf-8"))
    metrics = json.loads((reports / METRICS_FILE).read_text(encoding="utf-8"))
    return log_history, metrics


# --------------------------------------------------------------------------- work folder --
def prune_finished_work(work_root: Path, store: ArtifactStore, keep: str) -> list[str]:
    """Delete work folders of train keys whose artifact is committed (their checkpoints are spent)."""
    removed = []
    if not work_root.is_dir():
        return removed
    for folder in sorted(p for p in work_root.iterdir() if p.is_dir() and p.name != keep):
        if store.load("train", folder.name, verify=False) is not None:
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    path.mkdir(parents=True)
    return path


def _write_json(path: Path, value: Any) -> Path:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False, default=str), encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ plan --
def plan(recipe: Recipe, mixed: Manifest, ws: Workspace, data_card: dict[str, Any]) -> StageCall:
    """The call on the mix artifact: the base model's bytes or pinned revision, the template file,
    the device and the accelerate config are keyed; the data card travels as a parameter."""
    external: dict[str, str] = {}  # in key order; the names say what changed when one does
    params: dict[str, Any] = {"data_card": data_card}
    if not recipe.train.model.startswith("builtin:"):
        location = model_location(recipe.train.model, ws)
        external["train.model files"] = (sha256_tree(Path(location)) if Path(location).is_dir()
                                         else f"hub:{location}@{recipe.train.revision}")
        params["base_location"] = location  # what was hashed is what the task loads
    if recipe.train.chat_template and recipe.train.chat_template.lower() != "chatml":
        external["train.chat_template file"] = sha256_file(ws.resolve_input(recipe.train.chat_template))
    # Where it runs changes the result (bf16, attention kernel): a CPU model is no cache hit on a GPU.
    device = compute_device()
    external["device"] = f"device={device}"
    params["device"] = device
    if recipe.train.accelerate_config:  # processes and machines change the global batch: keyed by bytes
        config_file = ws.resolve_input(recipe.train.accelerate_config)
        external["train.accelerate_config file"] = f"accelerate_config={sha256_file(config_file)}"
        params["accelerate_config"] = str(config_file)
    # The data card is descriptive (it names this run): a parameter, not part of the key.
    return plan_call(sys.modules[__name__], recipe.train.canonical(), [mixed], ws, extra_input_hashes=external,
                     params=params)


@stage_task("train")
def train_stage(call: StageCall) -> StageOutput:
    return run_training(call)
