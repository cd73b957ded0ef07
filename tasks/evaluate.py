"""Evaluate a tuned model against its base: held-out loss, general perplexity, generations, IF checks.

What is measured, and why:

- **Held-out loss** (`heldout_loss`, `heldout_loss_base`): mean cross-entropy on the *assistant*
  tokens of the held-out eval split, tokenized exactly as training does (the chat template's
  `{% generation %}` mask, truncated to the training max_length keeping the start). It is the
  training objective on unseen rows, so it is comparable with the training loss curve. The mean is
  token-weighted (sum of NLL over all supervised tokens / their count), so it does not depend on
  batch size or padding.
- **General perplexity** (`general_ppl`, `general_ppl_base`): exp of the token-weighted mean NLL of
  plain texts without any template (the first token of each text has no context and is not
  scored). A rise over the base model signals forgetting; `regressed` is set when
  tuned > base * (1 + eval.regression_tolerance), and is None when no general text was given.
- **Gate** (`gate` in the result, report.json and the stage stats): two checks with the same
  rule, general perplexity and held-out perplexity (exp of the held-out loss), each failing when
  tuned > base * (1 + eval.regression_tolerance). `status` is "gated" when a measured check
  failed, "passed" when at least one was measured and none failed, "not_measured" otherwise; the
  flow decides what a gated model does to the run (eval.on_regression). See `gate_report`.
- **Instruction following** (`if_prompt_acc`, `if_instruction_acc`, plus `_base`): greedy
  generations for the built-in `tasks.lib.ifeval.IF_PROMPTS`, scored by the programmatic checks. The
  set is fixed, so these numbers compare across runs and recipes; the prompts of
  `eval.prompts` are generated and saved too, for reading, but not scored. A generation that
  reaches eval.max_new_tokens without a stop token is *truncated*; truncated and empty answers
  fail every check, and their counts are reported per model (`n_truncated`, `n_empty`).
- **Mask audit** (`mask_supervised_token_share`, `mask_zero_supervised_examples`): copied from the
  train stage's audit, so every number about a model sits in one `evals` table.
- **Judge** (`judge_score_mean`, `judge_score_mean_base`): only when `eval.judge.enabled`.

Base and tuned are measured one after the other; a full model is freed before the next is loaded,
and a LoRA adapter is measured on one loaded base (`disable_adapter()` gives the base numbers).
Both are loaded in one explicit precision whatever dtype their folders were saved in (see
`eval_precision`): a bf16 base measured in bf16 against a fine-tuned model saved in fp32 and
measured in fp32 would compare two precisions, not two models.
"""

from __future__ import annotations

import gc
import json
import math
import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, NamedTuple

from tasks.core.artifacts import Manifest
from tasks.core.hashing import sha256_file
from tasks.core.recipe import EvalConfig, Recipe
from tasks.core.records import DECISION_SCHEMA, RECORD_SCHEMA, StageOutput
from tasks.core.stage import StageCall, plan_call, stage_task
from tasks.core.weights import UnsafeWeightsError, missing_safetensors_error, require_safetensors
from tasks.core.workspace import Workspace
from tasks.lib.devices import compute_device
from tasks.lib.ifeval import IF_PROMPTS, score_responses
from tasks.lib.judge import check_judge_reachable, judge_generations

IGNORE_INDEX = -100  # label value cross-entropy skips (the transformers/TRL convention)
# End-of-turn tokens a chat template may close an assistant turn with; generation stops at them
# when the template uses them, even if the tokenizer's eos is a different token.
END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>")
REPORT_GENERATIONS = 5  # generations shown in report.md (all are in generations.json)
OUTPUT_FILES = ("report.json", "report.md", "generations.json")
BASE_MODEL, TUNED_MODEL = "evaluate (base model)", "evaluate (tuned model)"  # named in loading errors


# ---------------------------------------------------------------------------- tokenization --
def conversation_labels(tokenizer, template: str, messages: list[dict], max_length: int) -> tuple[list[int], list[int]]:
    """(input_ids, labels) of one conversation: labels are the ids on assistant tokens, -100 elsewhere.

    Tokenized as TRL does with assistant_only_loss (the template's generation mask), then truncated
    to max_length keeping the start.
    """
    encoded = tokenizer.apply_chat_template(
        [{"role": m["role"], "content": m["content"]} for m in messages],
        tokenize=True, return_dict=True, return_assistant_tokens_mask=True, chat_template=template,
    )
    input_ids = list(encoded["input_ids"])[:max_length]
    mask = list(encoded["assistant_masks"])[:max_length]
    labels = [token if supervised else IGNORE_INDEX for token, supervised in zip(input_ids, mask)]
    return input_ids, labels


def _pad_id(tokenizer) -> int:
    if tokenizer.pad_token_id is not None:
        return tokenizer.pad_token_id
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0


def _device(model):
    return next(model.parameters()).device


# ------------------------------------------------------------------------------------ loss --
def _nll_totals(model, pairs: list[tuple[list[int], list[int]]], pad_id: int, batch_size: int) -> tuple[float, int]:
    """Sum of next-token NLL over labelled positions, and their count; right padding, masked."""
    import torch
    import torch.nn.functional as F

    device = _device(model)
    total_nll, total_tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(pairs), batch_size):
            batch = [p for p in pairs[start:start + batch_size] if len(p[0]) >= 2]
            if not batch:
                continue
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (ids, labs) in enumerate(batch):
                input_ids[row, : len(ids)] = torch.tensor(ids)
                labels[row, : len(labs)] = torch.tensor(labs)
                attention[row, : len(ids)] = 1
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device)).logits
            # position t predicts token t+1; only labelled targets are gathered (and upcast), so the
            # float32 copy is the size of the supervised tokens, not of batch x length x vocab
            targets = labels[:, 1:].to(device)
            selected = targets != IGNORE_INDEX
            if not bool(selected.any()):
                continue
            step_logits = logits[:, :-1][selected].float()
            total_nll += float(F.cross_entropy(step_logits, targets[selected], reduction="sum"))
            total_tokens += int(selected.sum())
    return total_nll, total_tokens


def _heldout_totals(model, tokenizer, template: str, rows: list[dict], max_length: int, batch_size: int) -> tuple[float, int]:
    pairs = [conversation_labels(tokenizer, template, row["messages"], max_length) for row in rows]
    return _nll_totals(model, pairs, _pad_id(tokenizer), batch_size)


def heldout_loss(model, tokenizer, template: str, rows: list[dict], max_length: int, batch_size: int) -> float:
    """Token-weighted mean cross-entropy over the assistant tokens of `rows` (dicts with messages)."""
    nll, n_tokens = _heldout_totals(model, tokenizer, template, rows, max_length, batch_size)
    if n_tokens == 0:
        raise ValueError(
            f"held-out loss: none of the {len(rows)} eval rows has a supervised (assistant) token within "
            f"max_length={max_length}; check the chat template's generation markers and the eval split"
        )
    return nll / n_tokens


def _text_totals(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> tuple[float, int]:
    pairs = []
    for text in texts:
        ids = list(tokenizer(text)["input_ids"])[:max_length]
        pairs.append((ids, ids))  # every token after the first is a target
    return _nll_totals(model, pairs, _pad_id(tokenizer), batch_size)


def perplexity(model, tokenizer, texts: list[str], max_length: int, batch_size: int) -> float:
    """exp(token-weighted mean NLL) of plain texts, the first token of each text not scored."""
    nll, n_tokens = _text_totals(model, tokenizer, texts, max_length, batch_size)
    if n_tokens == 0:
        raise ValueError(f"perplexity: the {len(texts)} texts hold no token after their first one; give longer texts")
    return math.exp(nll / n_tokens)


# ------------------------------------------------------------------------------ generation --
def stop_token_ids(tokenizer, model, template: str) -> list[int]:
    """Ids generation stops at: the tokenizer's eos, generation_config's eos, the template's end of turn."""
    ids: set[int] = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if config_eos is not None:
        ids.update(int(i) for i in (config_eos if isinstance(config_eos, (list, tuple)) else [config_eos]))
    vocab = tokenizer.get_vocab()
    ids.update(vocab[token] for token in END_OF_TURN_TOKENS if token in template and token in vocab)
    return sorted(ids)


class Generation(NamedTuple):
    """One greedy generation: the new token ids before the first stop token, and whether none came."""

    token_ids: list[int]
    truncated: bool  # no stop token within max_new_tokens: the answer was cut, not finished


def generate(model, tokenizer, template: str, prompts: list[str], max_new_tokens: int,
             batch_size: int = 8) -> list[Generation]:
    """Greedy generations per prompt (one user turn each): ids cut before the first stop token, and
    whether the generation hit max_new_tokens without any stop token (truncated).

    Batched: prompts are left-padded so all end where generation begins, one `generate` call per batch.
    """
    import torch

    device = _device(model)
    stops = stop_token_ids(tokenizer, model, template)
    if not stops:
        raise ValueError("generation: the tokenizer has no eos token and the model's generation_config none; "
                         "set tokenizer.eos_token or generation_config.eos_token_id")
    pad_id = _pad_id(tokenizer)
    encoded = [
        list(tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=True, return_dict=True,
                                           add_generation_prompt=True, chat_template=template)["input_ids"])
        for prompt in prompts
    ]
    outputs: list[Generation] = []
    with torch.inference_mode():
        for start in range(0, len(encoded), batch_size):
            batch = encoded[start:start + batch_size]
            width = max(len(ids) for ids in batch)
            # left padding: every prompt ends at the same position, where generation begins
            input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(batch), width), dtype=torch.long)
            for row, ids in enumerate(batch):
                input_ids[row, width - len(ids):] = torch.tensor(ids)
                attention[row, width - len(ids):] = 1
            # pad, eos, the attention mask and left padding are all given, so generate has nothing to
            # warn about per batch (no "setting pad_token_id", no "right-padding detected"); sampling
            # flags in a model's generation_config are overridden by do_sample=False without a warning
            # in the transformers version pinned here (test_evaluate_generation.py checks the log is empty)
            generated = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), do_sample=False,
                max_new_tokens=max_new_tokens, eos_token_id=stops, pad_token_id=pad_id,
            )
            for row in generated[:, width:].tolist():
                # after a sequence's stop token, generate fills with pad: cut at the first stop; a row
                # without any stop token ran out of max_new_tokens (generate stops for no other reason here)
                cut = next((i for i, token in enumerate(row) if token in stops), None)
                outputs.append(Generation(row, True) if cut is None else Generation(row[:cut], False))
    return outputs


def generate_token_ids(model, tokenizer, template: str, prompts: list[str], max_new_tokens: int,
                       batch_size: int = 8) -> list[list[int]]:
    """Greedy new-token ids per prompt, cut before the first stop token (`generate` without the flags)."""
    return [g.token_ids for g in generate(model, tokenizer, template, prompts, max_new_tokens, batch_size)]


def _decode(tokenizer, token_ids: list[int]) -> str:
    return tokenizer.decode(token_ids, skip_special_tokens=True).strip()


def generate_responses(model, tokenizer, template: str, prompts: list[str], max_new_tokens: int,
                       batch_size: int = 8) -> list[str]:
    """Greedy responses (new tokens only, special tokens skipped, whitespace stripped), one per prompt."""
    generations = generate(model, tokenizer, template, prompts, max_new_tokens, batch_size)
    return [_decode(tokenizer, g.token_ids) for g in generations]


def load_prompts(path: Path) -> list[str]:
    """The `prompt` field of each line of a JSONL file; errors name the file and line."""
    prompts = []
    for line_number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise ValueError(f"{path}:{line_number}: not valid JSON ({exc}); eval.prompts is JSONL of {{\"prompt\": ...}}") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
            raise ValueError(f"{path}:{line_number}: needs a non-empty string field \"prompt\"")
        prompts.append(row["prompt"])
    if not prompts:
        raise ValueError(f"{path}: no prompts; add lines of {{\"prompt\": ...}} or unset eval.prompts")
    return prompts


# ---------------------------------------------------------------------------------- models --
def eval_precision() -> tuple[str, str]:
    """(dtype, device) both models are measured in: bfloat16 on a CUDA device that supports it,
    float32 on any other CUDA device and on CPU (where bf16 matmuls are slow and gain nothing here)."""
    import torch

    if torch.cuda.is_available():
        return ("bfloat16" if torch.cuda.is_bf16_supported() else "float32"), "cuda"
    return "float32", "cpu"


@contextmanager
def _no_progress_bars() -> Iterator[None]:
    """Hide transformers' progress bars (from_pretrained's "Loading weights") for a quiet stage log."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _load_model(location: str | Path, device: str, what: str, revision: str | None = None, dtype: str = "float32"):
    """A causal LM from a folder or hub id (at `revision`) in `dtype` on `device`: safetensors
    weights only, no remote code. The dtype is explicit, never the folder's own ("auto")."""
    import torch
    from transformers import AutoModelForCausalLM

    require_safetensors(location, what)
    try:
        with _no_progress_bars():
            model = AutoModelForCausalLM.from_pretrained(
                str(location), dtype=getattr(torch, dtype), use_safetensors=True, trust_remote_code=False,
                revision=revision,
            )
    except OSError as exc:
        unsafe = missing_safetensors_error(exc, location, what)
        if unsafe is None:
            raise
        raise unsafe from exc
    return model.to(device).eval()


def _require_safe_adapter(folder: Path) -> None:
    """PEFT loads adapter_model.bin (a pickle) when there is no adapter_model.safetensors."""
    if not (folder / "adapter_model.safetensors").is_file():
        raise UnsafeWeightsError(
            f"{TUNED_MODEL}: the LoRA adapter folder {folder} has no adapter_model.safetensors"
            + (" (only adapter_model.bin, a pickle that can run code when loaded)"
               if (folder / "adapter_model.bin").is_file() else "")
            + ". sftflow loads weights from safetensors only: load the adapter once where you trust the "
            "file and save it again with PeftModel.save_pretrained (it writes adapter_model.safetensors)"
        )


def _base_then_tuned(tuned_dir: Path, base_location: str | Path, base_revision: str | None = None,
                     precision: tuple[str, str] | None = None) -> Iterator[tuple[str, Any, Any]]:
    """Yield ("base", model, tokenizer) then ("tuned", model, tokenizer), holding one model at a time.
    A hub base is loaded at `base_revision`, the commit the train stage trained from.

    Both are loaded in `precision` (dtype, device), by default `eval_precision()`; a LoRA adapter's
    weights too. Both are measured with the tuned folder's tokenizer (the same vocabulary as the
    base; it is the one saved with the template that was trained), so the two losses count the same
    tokens.
    """
    import torch
    from transformers import AutoTokenizer

    dtype, device = precision or eval_precision()
    is_adapter = (tuned_dir / "adapter_config.json").exists()
    # Both folders are checked before either model loads: no base measured in vain.
    require_safetensors(base_location, BASE_MODEL)
    if is_adapter:
        _require_safe_adapter(tuned_dir)
    else:
        require_safetensors(tuned_dir, TUNED_MODEL)
    has_tokenizer = (tuned_dir / "tokenizer_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(str(tuned_dir if has_tokenizer else base_location),
                                              trust_remote_code=False, revision=None if has_tokenizer else base_revision)
    if is_adapter:
        from peft import PeftModel

        # autocast_adapter_dtype=False: PEFT would otherwise upcast a bf16 base's adapter weights to
        # fp32; they are loaded in the base's dtype, so the whole tuned model runs in one precision
        model = PeftModel.from_pretrained(_load_model(base_location, device, BASE_MODEL, base_revision, dtype),
                                          str(tuned_dir), autocast_adapter_dtype=False).eval()
        with model.disable_adapter():
            yield "base", model, tokenizer
        yield "tuned", model, tokenizer
        return
    yield "base", _load_model(base_location, device, BASE_MODEL, base_revision, dtype), tokenizer
    gc.collect()  # the caller dropped its reference to the base model before asking for the next
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    yield "tuned", _load_model(tuned_dir, device, TUNED_MODEL, dtype=dtype), tokenizer


def _measure(model, tokenizer, template: str, eval_rows: list[dict], texts: list[str], prompts: list[str],
             cfg: EvalConfig, max_length: int) -> dict[str, Any]:
    measured: dict[str, Any] = {}
    if eval_rows:
        nll, n_tokens = _heldout_totals(model, tokenizer, template, eval_rows, max_length, cfg.batch_size)
        measured["heldout_loss"] = nll / n_tokens if n_tokens else None
        measured["n_supervised_tokens"] = n_tokens
    if texts:
        nll, n_tokens = _text_totals(model, tokenizer, texts, max_length, cfg.batch_size)
        measured["general_ppl"] = _exp(nll / n_tokens) if n_tokens else None
        measured["n_text_tokens"] = n_tokens
    generations = generate(model, tokenizer, template, prompts, cfg.max_new_tokens, cfg.batch_size)
    measured["responses"] = [_decode(tokenizer, g.token_ids) for g in generations]
    measured["truncated"] = [g.truncated for g in generations]
    return measured


def _summary_line(label: str, measured: dict[str, Any], n_rows: int, seconds: float) -> str:
    """One log line per model: what was measured and how long loading and measuring took."""
    parts = []
    if measured.get("heldout_loss") is not None:
        parts.append(f"held-out loss {measured['heldout_loss']:.3f} on {n_rows} rows")
    if measured.get("general_ppl") is not None:
        parts.append(f"general ppl {measured['general_ppl']:.1f}")
    n_empty = sum(not r.strip() for r in measured["responses"])
    parts.append(f"{len(measured['responses'])} generations ({sum(measured['truncated'])} truncated, {n_empty} empty)")
    return f"[evaluate] {label}: {', '.join(parts)} in {seconds:.1f} s"


# --------------------------------------------------------------------------------- metrics --
def _metric(name: str, value: float | int, detail: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metric": name, "value": float(value), "detail": detail or {}}


def _mask_metrics(mask_audit: dict[str, Any]) -> list[dict[str, Any]]:
    share = mask_audit.get("supervised_token_share")
    overall = share.get("overall") if isinstance(share, dict) else share
    metrics = []
    if overall is not None:
        detail = {k: share[k] for k in ("by_category", "by_source") if isinstance(share, dict) and k in share}
        metrics.append(_metric("mask_supervised_token_share", overall, detail))
    if mask_audit.get("n_zero_supervised") is not None:
        metrics.append(_metric("mask_zero_supervised_examples", mask_audit["n_zero_supervised"],
                               {"n_examples": mask_audit.get("n_examples")}))
    return metrics


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


def _exp(x: float) -> float:
    """exp(x), inf where it overflows (a diverged model's loss)."""
    return math.inf if x > 709.0 else math.exp(x)  # NaN stays NaN


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
            base, tuned, ratio = _exp(base), _exp(tuned), _exp(log_ratio)
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


def evaluate_model(tuned_dir: Path, base_location: str | Path, template: str, eval_rows: list[dict],
                   general_texts: list[str], cfg: EvalConfig, max_length: int, out_dir: Path,
                   mask_audit: dict | None = None, prompts: list[str] | None = None,
                   base_revision: str | None = None) -> dict[str, Any]:
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

    dtype, device = eval_precision()
    print(f"[evaluate] base and tuned in {dtype} on {device}: {len(eval_rows)} held-out rows, {len(texts)} general "
          f"texts, {len(items)} prompts at up to {cfg.max_new_tokens} new tokens")
    measured: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for label, model, tokenizer in _base_then_tuned(tuned_dir, base_location, base_revision, (dtype, device)):
        measured[label] = _measure(model, tokenizer, template, eval_rows, texts, [i["prompt"] for i in items], cfg, max_length)
        del model  # lets the generator free a full base model before loading the tuned one
        print(_summary_line(label, measured[label], len(eval_rows), time.perf_counter() - started))
        started = time.perf_counter()  # the next model's time includes its loading

    metrics: list[dict[str, Any]] = []
    skipped: list[str] = []
    base, tuned = measured["base"], measured["tuned"]
    tolerance = cfg.regression_tolerance
    gate = gate_report(tolerance, tuned.get("general_ppl"), base.get("general_ppl"),
                       tuned.get("heldout_loss"), base.get("heldout_loss"))
    general_check, heldout_check = gate["checks"]
    # None when general perplexity was not measured: "not regressed" would claim a check that never ran
    regressed = None if not general_check["measured"] else not general_check["passed"]
    if heldout_check["measured"]:
        for suffix, m in (("", tuned), ("_base", base)):
            detail = {"n_examples": len(eval_rows), "n_supervised_tokens": m["n_supervised_tokens"],
                      "max_length": max_length}
            if suffix == "":  # the gate's held-out check, on the tuned row like general_ppl's
                detail.update(passed=heldout_check["passed"], ratio=heldout_check["ratio"], tolerance=tolerance)
            metrics.append(_metric(f"heldout_loss{suffix}", m["heldout_loss"], detail))
    else:
        skipped.append("heldout_loss: no eval rows (mix.eval_fraction is 0) or none with an assistant token")
    if general_check["measured"]:
        metrics.append(_metric("general_ppl", tuned["general_ppl"], {
            "regressed": regressed, "tolerance": tolerance, "base": general_check["base"],
            "ratio": general_check["ratio"], "n_texts": len(texts)}))
        metrics.append(_metric("general_ppl_base", base["general_ppl"], {"n_texts": len(texts)}))
    else:
        skipped.append("general_ppl: no general texts (set eval.general_text to a JSONL of {text})")

    n_if = len(IF_PROMPTS)
    if_eval = {label: score_responses(items[:n_if], measured[label]["responses"][:n_if],
                                      measured[label]["truncated"][:n_if])
               for label in ("base", "tuned")}
    for suffix, label in (("", "tuned"), ("_base", "base")):
        scored = if_eval[label]
        per_kind = {kind: tally["accuracy"] for kind, tally in scored["per_kind"].items()}
        # n_truncated / n_empty: IF answers that failed every check for want of a finished answer
        metrics.append(_metric(f"if_prompt_acc{suffix}", scored["prompt_level_accuracy"], {
            "n_prompts": scored["n_prompts"], "n_truncated": sum(measured[label]["truncated"][:n_if]),
            "n_empty": scored["n_empty"], "max_new_tokens": cfg.max_new_tokens}))
        metrics.append(_metric(f"if_instruction_acc{suffix}", scored["instruction_level_accuracy"],
                               {"n_instructions": scored["n_instructions"], "per_kind": per_kind}))
    if mask_audit:
        metrics.extend(_mask_metrics(mask_audit))

    generations = []
    for index, item in enumerate(items):
        row = {"id": item["id"], "prompt": item["prompt"],
               "base": base["responses"][index], "tuned": tuned["responses"][index],
               "truncated_base": base["truncated"][index], "truncated_tuned": tuned["truncated"][index]}
        if index < n_if:
            row["if_passed_base"] = if_eval["base"]["items"][index]["passed"]
            row["if_passed_tuned"] = if_eval["tuned"]["items"][index]["passed"]
        generations.append(row)
    if cfg.judge.enabled:
        for label in ("tuned", "base"):
            judged = judge_generations(cfg.judge, [{"prompt": g["prompt"], "response": g[label]} for g in generations])
            for g, j in zip(generations, judged):
                g[f"judge_score_{label}"] = j["judge_score"]
            scores = [j["judge_score"] for j in judged if j["judge_score"] is not None]
            if scores:
                metrics.append(_metric("judge_score_mean" + ("" if label == "tuned" else "_base"), sum(scores) / len(scores),
                                       {"judge_model": cfg.judge.model, "n_scored": len(scores), "n_items": len(judged)}))

    generation_counts = {label: {"n_generations": len(m["truncated"]), "n_truncated": sum(m["truncated"]),
                                 "n_empty": sum(not r.strip() for r in m["responses"])}
                         for label, m in (("base", base), ("tuned", tuned))}
    report = {
        "tuned": str(tuned_dir), "base": str(base_location), "regressed": regressed, "gate": gate,
        "eval_dtype": dtype, "eval_device": device, "metrics": metrics, "skipped": skipped,
        "generation_counts": generation_counts, "if_eval": if_eval, "max_length": max_length,
        # on_regression is the flow's decision about this report, not part of what was measured
        "eval": {k: v for k, v in cfg.canonical().items() if k != "on_regression"},
    }
    report_md = render_report(report, generations)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    (out_dir / "report.md").write_text(report_md, encoding="utf-8")
    (out_dir / "generations.json").write_text(json.dumps(generations, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if gate["status"] == "gated":
        print(f"[evaluate] gate: gated: {gate['message']}")
    else:
        print(f"[evaluate] gate: {gate['status']} (tolerance {_tolerance_text(tolerance)})")
    return {"metrics": metrics, "report_md": report_md, "regressed": regressed, "gate": gate,
            "eval_dtype": dtype, "eval_device": device}


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


# --------------------------------------------------------------------------- Prefect wrapper --
LIBRARIES = ("transformers", "torch", "peft", "tokenizers")


def read_texts(path: Path, limit: int) -> list[str]:
    """The `text` field of the first `limit` rows of a JSONL/JSON/Parquet file (the general corpus).

    Read like a decontamination eval set of format `text`: same file kinds, same errors.
    """
    from tasks.lib.decontaminate import eval_row_texts, read_eval_rows

    texts: list[str] = []
    for place, row in read_eval_rows(path, f"eval.general_text {path}"):
        texts += eval_row_texts(row, "text", place)
        if len(texts) >= limit:
            break
    return texts[:limit]


# ------------------------------------------------------------------------------------ plan --
# Read by the flow after evaluate: what a tripped gate does to the run, not what is measured.
UNKEYED = ("eval.on_regression",)


def plan(recipe: Recipe, trained: Manifest, mixed: Manifest, ws: Workspace) -> StageCall:
    """The call on the train artifact and the mix artifact (its eval split), keyed by the eval files."""
    config = {"eval": recipe.eval.canonical(), "max_length": recipe.train.max_length}
    external = [sha256_file(ws.resolve_input(p)) for p in (recipe.eval.general_text, recipe.eval.prompts) if p]
    # The device picks the precision both models are measured in (eval_precision): a verdict
    # measured in fp32 on CPU is no cache hit for a bf16 run on a GPU.
    external.append(f"device={compute_device()}")
    return plan_call(sys.modules[__name__], config, [trained, mixed], ws, extra_input_hashes=external)


@stage_task("evaluate")
def evaluate_stage(call: StageCall) -> StageOutput:
    """Inputs: the train artifact, then the mix artifact (its eval shards)."""
    import shutil

    from tasks.core.artifacts import read_tables
    from tasks.core.workspace import Workspace

    cfg = EvalConfig.model_validate(call.config["eval"])
    trained, mixed = call.inputs
    ws = Workspace.from_env(root=call.root, warehouse=call.warehouse)
    eval_shards = [mixed.file(s["name"]) for s in mixed.stats.get("shards", []) if s["split"] == "eval"]
    eval_rows = read_tables(eval_shards).select(["example_id", "messages"]).to_pylist() if eval_shards else []
    general = read_texts(ws.resolve_input(cfg.general_text), cfg.max_general_texts) if cfg.general_text else []
    prompts = load_prompts(ws.resolve_input(cfg.prompts)) if cfg.prompts else None
    base_folder = trained.file("base_model")
    # The base the train stage really loaded: its confined local folder or hub id (not the raw
    # recipe string, which would resolve against the working directory).
    base = base_folder if base_folder.is_dir() else trained.stats["model"]["base_location"]
    audit_path = trained.file("mask_audit.json")
    out_dir = Path(call.warehouse) / "work" / "evaluate" / call.key
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    result = evaluate_model(
        trained.file("model"), base, trained.file("chat_template.jinja").read_text(encoding="utf-8"),
        eval_rows, general, cfg, call.config["max_length"], out_dir,
        mask_audit=json.loads(audit_path.read_text(encoding="utf-8")) if audit_path.is_file() else None,
        prompts=prompts,
        base_revision=None if base_folder.is_dir() else trained.stats["model"].get("revision"),
    )
    return evaluate_stage_output(result, out_dir, model_id=trained.key)
