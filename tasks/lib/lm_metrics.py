"""Language-model measurements on a loaded model: held-out loss, perplexity and greedy generation.

- **Held-out loss** (`heldout_loss`): mean cross-entropy on the *assistant* tokens of chat rows,
  tokenized exactly as training does (tasks/lib/chat_tokens.py: the chat template's
  `{% generation %}` mask, truncated to the training max_length keeping the start). It is the
  training objective on unseen rows, so it is comparable with the training loss curve. The mean
  is token-weighted (sum of NLL over all supervised tokens / their count), so it does not depend
  on batch size or padding.
- **Perplexity** (`perplexity`): exp of the token-weighted mean NLL of plain texts without any
  template (the first token of each text has no context and is not scored).
- **Generation** (`generate`): batched greedy decoding of one user turn per prompt, stopping at
  the tokenizer's eos, the generation_config's eos and the template's end-of-turn token. A
  generation that reaches max_new_tokens without a stop token is *truncated*.

`measure_model` takes all three on one model, as the evaluate stage needs them per model.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

from sftflow.tasks.lib.chat_tokens import END_OF_TURN_CANDIDATES, IGNORE_INDEX, conversation_labels


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


def exp_or_inf(x: float) -> float:
    """exp(x), inf where it overflows (a diverged model's loss)."""
    return math.inf if x > 709.0 else math.exp(x)  # NaN stays NaN


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
    ids.update(vocab[token] for token in END_OF_TURN_CANDIDATES if token in template and token in vocab)
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


# ----------------------------------------------------------------------------- one model --
def measure_model(model, tokenizer, template: str, eval_rows: list[dict], texts: list[str], prompts: list[str],
                  max_length: int, batch_size: int, max_new_tokens: int) -> dict[str, Any]:
    """One model's figures: `heldout_loss` and `n_supervised_tokens` (when there are eval rows),
    `general_ppl` and `n_text_tokens` (when there are texts), and per prompt its decoded `responses`
    and whether each was `truncated`. A figure with no token to average over is None."""
    measured: dict[str, Any] = {}
    if eval_rows:
        nll, n_tokens = _heldout_totals(model, tokenizer, template, eval_rows, max_length, batch_size)
        measured["heldout_loss"] = nll / n_tokens if n_tokens else None
        measured["n_supervised_tokens"] = n_tokens
    if texts:
        nll, n_tokens = _text_totals(model, tokenizer, texts, max_length, batch_size)
        measured["general_ppl"] = exp_or_inf(nll / n_tokens) if n_tokens else None
        measured["n_text_tokens"] = n_tokens
    generations = generate(model, tokenizer, template, prompts, max_new_tokens, batch_size)
    measured["responses"] = [_decode(tokenizer, g.token_ids) for g in generations]
    measured["truncated"] = [g.truncated for g in generations]
    return measured
