"""The reward-model quality scorer: a sequence-classification model's reward per (prompt, response)
pair, with each pair cut to the model's token budget the way a judge should read it (the prompt's
start gives way first, the response is kept whole when it fits).
"""

from __future__ import annotations

import inspect
import math
from typing import Any

from sftflow.tasks.core.weights import missing_safetensors_error, require_safetensors
from sftflow.tasks.lib.scorers import (NOT_TRUNCATED, TURN_SEPARATOR, ScoredPairs, Truncation, _check_scores,
                                       _pick_device, reward_model_dtype)


def reward_model_text(tokenizer: Any, prompt: str, response: str) -> tuple[str, bool]:
    """The text a reward model reads, and whether it came from the tokenizer's chat template.

    With a chat template the pair is rendered as one user turn and one assistant turn (the
    template adds its own special tokens, so the caller must not add them again); without one,
    the plain "User: ...\\n\\nAssistant: ..." layout that classic reward models were trained on.
    """
    if getattr(tokenizer, "chat_template", None):
        conversation = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
        return tokenizer.apply_chat_template(conversation, tokenize=False), True
    return f"User: {prompt}{TURN_SEPARATOR}Assistant: {response}", False


def _count_tokens(tokenizer: Any, text: str, add_special_tokens: bool) -> int:
    # verbose=False: counting a text longer than the model's positions is the point here, not a mistake
    return len(tokenizer(text, add_special_tokens=add_special_tokens, verbose=False)["input_ids"])


class _TokenCutter:
    """Cuts one text at its token boundaries: keep its first k or its last k tokens.

    A fast tokenizer gives each token's character span; a slow one (no offsets) is bisected on
    character positions, counting tokens, which costs a few tokenizer calls per cut.
    """

    def __init__(self, tokenizer: Any, text: str):
        self.tokenizer, self.text = tokenizer, text
        self.spans: list[tuple[int, int]] | None = None
        if getattr(tokenizer, "is_fast", False):
            self.spans = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True,
                                   verbose=False)["offset_mapping"]
            self.n_tokens = len(self.spans)
        else:
            self.n_tokens = _count_tokens(tokenizer, text, False)

    def _count(self, text: str) -> int:
        return _count_tokens(self.tokenizer, text, False)

    def last(self, k: int) -> str:
        if k >= self.n_tokens:
            return self.text
        if k <= 0:
            return ""
        if self.spans is not None:
            return self.text[self.spans[self.n_tokens - k][0]:]
        lo, hi = 0, len(self.text)  # the smallest start whose suffix has at most k tokens
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if self._count(self.text[mid:]) <= k else (mid + 1, hi)
        return self.text[lo:]

    def first(self, k: int) -> str:
        if k >= self.n_tokens:
            return self.text
        if k <= 0:
            return ""
        if self.spans is not None:
            return self.text[: self.spans[k - 1][1]]
        lo, hi = 0, len(self.text)  # the largest end whose prefix has at most k tokens
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self._count(self.text[:mid]) <= k else (lo, mid - 1)
        return self.text[:lo]


def fit_reward_text(tokenizer: Any, prompt: str, response: str, max_length_tokens: int) -> tuple[str, Truncation]:
    """The pair rendered as `reward_model_text` does, cut to `max_length_tokens` the way a judge
    should read it: the response whole and the prompt cut from the LEFT (its end, the request
    nearest the answer, is kept). Only a response that alone does not fit loses its end, and then
    nothing of the prompt is left. Returns the text and the tokens dropped from each side.

    The cuts are made on the prompt and response text at token boundaries and the pair is
    rendered again, so the template's markers and special tokens are all still there. Tokens can
    merge differently at a cut, so the result is re-counted and cut further until it fits.
    """
    text, from_template = reward_model_text(tokenizer, prompt, response)
    add_special = not from_template  # a chat template writes its own special tokens
    n_total = _count_tokens(tokenizer, text, add_special)
    if n_total <= max_length_tokens:
        return text, NOT_TRUNCATED
    prompt_cut, response_cut = _TokenCutter(tokenizer, prompt), _TokenCutter(tokenizer, response)
    overhead = max(0, n_total - prompt_cut.n_tokens - response_cut.n_tokens)  # template + special tokens
    room = max(0, max_length_tokens - overhead)
    keep_response = min(response_cut.n_tokens, room)
    keep_prompt = min(prompt_cut.n_tokens, room - keep_response)
    while True:
        text, _ = reward_model_text(tokenizer, prompt_cut.last(keep_prompt), response_cut.first(keep_response))
        excess = _count_tokens(tokenizer, text, add_special) - max_length_tokens
        if excess <= 0 or keep_prompt + keep_response == 0:
            # (a template longer than max_length_tokens by itself is cut from the right by the
            # tokenizer's truncation, the last resort)
            break
        from_prompt = min(excess, keep_prompt)  # the prompt gives way first, as above
        keep_prompt -= from_prompt
        keep_response -= min(excess - from_prompt, keep_response)
    return text, Truncation(prompt_cut.n_tokens - keep_prompt, response_cut.n_tokens - keep_response)


def length_sorted_batches(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches, longest first (ties by index), so padding per batch is small
    and a batch that would run out of memory does so at the start, not after an hour.

    >>> length_sorted_batches([3, 9, 1, 9, 5], 2)
    [[1, 3], [4, 0], [2]]
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    return [order[start : start + batch_size] for start in range(0, len(order), batch_size)]


class RewardModelScorer:
    """A sequence-classification reward model: score = logits[:, 0] for a single-label head, else
    the logit of the last label (by convention the "good"/"chosen" class of two-label heads).

    A pair longer than `max_length_tokens` loses the start of its prompt first, then the end of
    its response (`fit_reward_text`); each pair's loss is reported by `score_truncated`. Pairs
    are batched by token length (longest first) and returned in input order. The tokenizer's pad
    token falls back to its eos token.
    """

    def __init__(
        self,
        model: str,
        batch_size: int = 32,
        max_length_tokens: int = 512,
        device: str | None = None,
        label: str | None = None,
        revision: str | None = None,
    ):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.batch_size = batch_size
        self.max_length_tokens = max_length_tokens
        self.device = _pick_device(device)
        self.name = f"reward-model:{label or model}"
        require_safetensors(model, f"score.model {label or model!r}")
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(model, revision=revision, trust_remote_code=False)
            dtype = reward_model_dtype(self.device)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                model,
                revision=revision,  # None for a local folder; a hub id at its pinned revision
                trust_remote_code=False,
                use_safetensors=True,  # a pickled pytorch_model.bin could run code when loaded
                dtype=getattr(torch, dtype) if dtype != "auto" else "auto",
            )
        except OSError as exc:
            unsafe = missing_safetensors_error(exc, model, f"score.model {label or model!r}")
            if unsafe is not None:
                raise unsafe from exc
            raise OSError(
                f"score.model {label or model!r}: cannot load a tokenizer and sequence-classification "
                f"model ({exc}). Give a local folder written by save_pretrained, or a hub id that is "
                "already in the Hugging Face cache when running offline."
            ) from exc
        if self.tokenizer.pad_token is None:
            if self.tokenizer.eos_token is None:
                raise ValueError(
                    f"score.model {label or model!r}: its tokenizer has neither a pad nor an eos "
                    "token, so batches cannot be padded; add a pad token to the tokenizer"
                )
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            # Decoder classifiers pool at the last non-pad token and refuse batches without this.
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.model.to(self.device).eval()
        # Tokenizers may return inputs the model does not take (token_type_ids for a Llama head).
        self.forward_inputs = frozenset(inspect.signature(self.model.forward).parameters)

    def _tokenize(self, texts: list[str], add_special_tokens: bool, padding: bool, truncate: bool = True) -> Any:
        # Texts reach the model already fitted (fit_reward_text); the tokenizer's own right-side
        # truncation is only the last resort for a template longer than max_length_tokens.
        return self.tokenizer(
            texts, truncation=truncate, max_length=self.max_length_tokens if truncate else None,
            padding=padding, add_special_tokens=add_special_tokens,
            return_tensors="pt" if padding else None, verbose=False,
        )

    def score_truncated(self, pairs: list[tuple[str, str]]) -> ScoredPairs:
        import torch
        from tqdm.auto import tqdm

        if not pairs:
            return ScoredPairs([], [])
        rendered = [reward_model_text(self.tokenizer, p, r) for p, r in pairs]
        texts = [text for text, _ in rendered]
        from_template = rendered[0][1]  # one tokenizer: all pairs take the same path
        lengths = [len(ids) for ids in self._tokenize(texts, not from_template, padding=False, truncate=False)["input_ids"]]
        truncations = [NOT_TRUNCATED] * len(pairs)
        for i, n_tokens in enumerate(lengths):
            if n_tokens > self.max_length_tokens:  # only long pairs pay for the cut
                texts[i], truncations[i] = fit_reward_text(self.tokenizer, *pairs[i], self.max_length_tokens)
                lengths[i] = self.max_length_tokens
        scores: list[float] = [math.nan] * len(pairs)
        batches = length_sorted_batches(lengths, self.batch_size)
        with torch.inference_mode():
            for batch in tqdm(batches, desc="reward model", unit="batch", disable=len(batches) < 10):
                encoded = self._tokenize([texts[i] for i in batch], not from_template, padding=True)
                inputs = {k: v.to(self.device) for k, v in encoded.items() if k in self.forward_inputs}
                logits = self.model(**inputs).logits.float()
                column = logits[:, 0] if logits.shape[-1] == 1 else logits[:, -1]
                for index, value in zip(batch, column.cpu().tolist()):
                    scores[index] = float(value)
        return ScoredPairs(_check_scores(self.name, scores, len(pairs)), truncations)

    def score(self, pairs: list[tuple[str, str]]) -> list[float]:
        return self.score_truncated(pairs).scores
