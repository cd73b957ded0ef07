"""The train stage's checks on its rows, before and after the training process.

Before: every distinct train row gets a decision (`supervision_decisions`: rows that truncation
to max_length leaves without a supervised token are dropped as `no_supervised_tokens`), and the
mask audit (tasks/lib/mask_audit.py) runs on all rows or a seeded sample (`audit_sample`);
`audit_summary` is the part of the audit that goes into stats and the catalog.

After: the round trip on the saved folder (`roundtrip_check`): sampled train rows
(`sample_rows`) are re-rendered with the saved tokenizer's own template and their token
sequences must be among those the trainer really trained on; the saved template must equal the
one used byte for byte, and the saved generation_config must stop on the template's end-of-turn
token.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from sftflow.tasks.core.reasons import Reason
from sftflow.tasks.core.records import DecisionLog
from sftflow.tasks.lib.chat_template import end_of_turn_token
from sftflow.tasks.lib.chat_tokens import supervised_counts, tokenize_conversation
from sftflow.tasks.lib.train_worker import CHAT_TEMPLATE_FILE, TRAINED_SEQUENCES_FILE, sequence_digest


class RoundTripError(RuntimeError):
    """The saved model folder would not render train rows as they were trained."""


# -------------------------------------------------------------------------------- sampling --
def seeded_order(example_ids: list[str], seed: int, salt: str) -> list[int]:
    """Indices ordered by sha256(salt, seed, id): a sample that does not depend on row order."""
    def key(i: int) -> str:
        return hashlib.sha256(f"{salt}\x1f{seed}\x1f{example_ids[i]}".encode("utf-8")).hexdigest()

    return sorted(range(len(example_ids)), key=key)


def sample_rows(rows: list[dict[str, Any]], n_rows: int, seed: int, salt: str) -> list[dict[str, Any]]:
    """Up to `n_rows` rows with distinct example_ids (upsampled copies count once), seeded."""
    unique: dict[str, dict[str, Any]] = {}
    for row in rows:
        unique.setdefault(row["example_id"], row)
    ids = sorted(unique)
    return [unique[ids[i]] for i in seeded_order(ids, seed, salt)[:n_rows]]


def audit_sample(rows: list[dict[str, Any]], max_rows: int, seed: int) -> list[dict[str, Any]]:
    """All rows (copies included: the audit describes the mixture) or a seeded sample of max_rows."""
    if len(rows) <= max_rows:
        return rows
    order = seeded_order([f"{r['example_id']}#{i}" for i, r in enumerate(rows)], seed, "train-audit")
    return [rows[i] for i in sorted(order[:max_rows])]


# ------------------------------------------------------------------------- before training --
def supervision_decisions(rows: list[dict[str, Any]], tokenizer, template: str,
                          max_length: int) -> tuple[DecisionLog, set[str]]:
    """One decision per distinct example_id of `rows`: `no_supervised_tokens` when truncation to
    max_length (keeping the start, as TRL does) leaves no supervised token although the whole
    conversation has some, else `kept`. Returns the log and the dropped ids.

    Every distinct row is tokenized once (the audit only samples): the rows dropped here are
    exactly the rows TRL would drop, which the worker re-checks on its own dataset.
    """
    log, dropped = DecisionLog(), set()
    seen: set[str] = set()
    for row in rows:
        example_id = row["example_id"]
        if example_id in seen:
            continue
        seen.add(example_id)
        counts = supervised_counts(tokenizer, template, row["messages"], max_length)
        if counts["supervised"] and not counts["supervised_truncated"]:
            log.add(example_id, Reason.NO_SUPERVISED_TOKENS, score=float(counts["n_tokens"]), detail={
                "max_length": max_length, "n_tokens": counts["n_tokens"],
                "supervised_tokens_before_truncation": counts["supervised"],
                "first_supervised_position": counts["first_supervised_position"]})
            dropped.add(example_id)
        else:
            log.add(example_id, Reason.KEPT)
    return log, dropped


def audit_summary(audit: dict[str, Any]) -> dict[str, Any]:
    """The audit numbers that go into manifest stats and the catalog's evals."""
    eot = audit.get("end_of_turn_supervised") or {}
    content = audit.get("assistant_content_supervised") or {}
    return {
        "n_examples": audit.get("n_examples"),
        "supervised_token_share": (audit.get("supervised_token_share") or {}).get("overall"),
        "n_zero_supervised": audit.get("n_zero_supervised"),
        "n_dropped_no_supervised_tokens": audit.get("n_dropped_no_supervised_tokens"),
        "non_assistant_supervised": audit.get("non_assistant_supervised"),
        "end_of_turn_supervised": eot.get("ok"),
        "end_of_turn_share_of_examples": eot.get("share_of_examples"),
        # Lowest per-turn share of assistant content tokens supervised, and the threshold it must meet.
        "assistant_content_min_supervised_share": content.get("min_share"),
        "assistant_content_share_threshold": content.get("threshold"),
        "assistant_turns_below_threshold": content.get("n_turns_below"),
        "assistant_turns_content_not_located": content.get("n_turns_not_located"),
        "mean_tokens": audit.get("mean_tokens"),
        "n_truncated": audit.get("n_truncated"),
        "max_length": audit.get("max_length"),
    }


# -------------------------------------------------------------------------- after training --
def roundtrip_check(output_dir: Path, rows: list[dict[str, Any]], template_used: str, max_length: int,
                    packing: bool) -> dict[str, Any]:
    """Check the SAVED folder renders `rows` exactly as they were trained. Returns the JSON report
    (key "ok"); raising is the caller's choice, so the report can be written first."""
    from transformers import AutoTokenizer, GenerationConfig

    output_dir = Path(output_dir)
    sequences = json.loads((output_dir / TRAINED_SEQUENCES_FILE).read_text(encoding="utf-8"))
    trained = set(sequences["sha256"])
    worker_samples = {s["example_id"]: s["sha256"] for s in sequences.get("samples", [])}
    template_file = output_dir / CHAT_TEMPLATE_FILE
    saved_bytes = template_file.read_bytes() if template_file.is_file() else None
    tokenizer = AutoTokenizer.from_pretrained(str(output_dir))
    saved_template = tokenizer.chat_template
    problems: list[str] = []

    template_ok = saved_bytes == template_used.encode("utf-8") and saved_template == template_used
    if not template_ok:
        problems.append(f"{template_file} differs from the chat template used in training")

    checked, skipped, missing = [], [], []
    for row in rows:
        encoded = tokenize_conversation(tokenizer, saved_template, row["messages"], max_length)
        if not packing and not any(encoded["assistant_masks"]):
            skipped.append(row["example_id"])  # TRL drops examples truncated to no supervised token
            continue
        digest = sequence_digest(encoded["input_ids"])
        checked.append(row["example_id"])
        if digest not in trained:
            worker = worker_samples.get(row["example_id"])
            missing.append({"example_id": row["example_id"], "sha256": digest,
                            "worker_sha256": worker, "worker_sha256_trained": worker in trained if worker else None})
    if missing:
        problems.append(f"{len(missing)} of {len(checked)} re-rendered train rows are not among the trained "
                        "sequences (see `missing`: worker_sha256_trained=true means training tokenized them "
                        "as expected and the saved tokenizer/template changed them)")
    if not checked:
        problems.append("no train row could be re-rendered and checked")

    try:
        eot = end_of_turn_token(saved_template or template_used, tokenizer)
        eot_id = tokenizer.convert_tokens_to_ids(eot)
    except ValueError as exc:
        eot, eot_id = None, None
        problems.append(str(exc))
    generation_file = output_dir / "generation_config.json"
    eos_ids: list[int] = []
    if generation_file.is_file():
        eos = GenerationConfig.from_pretrained(str(output_dir)).eos_token_id
        eos_ids = [] if eos is None else [eos] if isinstance(eos, int) else list(eos)
    if eot_id is not None and eot_id not in eos_ids:
        problems.append(f"generation_config.json eos_token_id {eos_ids} lacks the end-of-turn token "
                        f"{eot!r} (id {eot_id}): generation would not stop at the end of a turn")

    return {
        "ok": not problems,
        "problems": problems,
        "template_byte_identical": template_ok,
        "n_rows_checked": len(checked),
        "n_rows_skipped_fully_masked": len(skipped),
        "n_missing": len(missing),
        "missing": missing[:20],
        "checked_example_ids": checked,
        "n_trained_sequences": sequences.get("n_sequences"),
        "end_of_turn_token": eot,
        "end_of_turn_token_id": eot_id,
        "generation_eos_token_ids": eos_ids,
        "max_length": max_length,
        "packing": packing,
    }


def require_roundtrip(report: dict[str, Any], where: Path) -> None:
    if not report["ok"]:
        raise RoundTripError(
            f"template round trip failed for {where}: " + "; ".join(report["problems"])
            + " — the folder is not handed on; fix the tokenizer/template saving, then re-run"
        )
