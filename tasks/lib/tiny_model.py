"""`builtin:tiny-llama` (a small model built offline from a config) and hub/local model loading.

The tiny model exists so the whole pipeline runs where nothing can be downloaded: a byte-level BPE
tokenizer is trained on the train split's conversations and a randomly initialised Llama is built
from `TinyModelConfig`. Both are saved with save_pretrained and loaded back with from_pretrained,
because that folder is what training, evaluation and the artifact use; a folder that only works
in the process that built it would hide mistakes until evaluation.

Llama, not Qwen2: a reloaded Qwen2 folder gets a Qwen2 tokenizer class that rebuilds its own
pre-tokenizer instead of the trained one, silently changing how text is split. The tokenizer is
saved as a plain PreTrainedTokenizerFast, and the reload is checked to encode a probe identically.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable, Iterator

from sftflow.tasks.lib.chat_template import CHATML_TEMPLATE
from sftflow.tasks.core.recipe_training import TinyModelConfig
from sftflow.tasks.core.weights import missing_safetensors_error, require_safetensors

SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>")
BUILTIN_TINY_LLAMA = "builtin:tiny-llama"
TOKENIZER_MAX_LENGTH = 1_000_000  # no tokenizer-side limit: train.max_length truncates, not this

# Encoded by the tokenizer before and after the reload; covers specials, newlines, spaces, non-ASCII.
_PROBE_TEXT = (
    "<|im_start|>user\nHow many  legs does a spider have? Ünïcödé → 8<|im_end|>\n"
    "<|im_start|>assistant\n  Eight legs.\n\tDone<|im_end|>\n<|endoftext|><|pad|>"
)


def conversation_texts(rows: Iterable[dict]) -> Iterator[str]:
    """Each turn's content of each row (rows carry `messages`), the tokenizer's training text."""
    for row in rows:
        for message in row["messages"]:
            content = message.get("content")
            if content:
                yield content


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """Byte-level BPE trained on `texts`, wrapped as a PreTrainedTokenizerFast with the ChatML template.

    Deterministic for the same texts and vocab_size. Every byte is in the initial alphabet, so any
    text encodes without an unknown token; the special tokens take ids 0..3 in SPECIAL_TOKENS order.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    minimum = 256 + len(SPECIAL_TOKENS)
    if vocab_size < minimum:
        raise ValueError(
            f"train.tiny.vocab_size={vocab_size} is below {minimum} (256 bytes + {len(SPECIAL_TOKENS)} "
            "special tokens); raise it"
        )
    backend = Tokenizer(models.BPE(unk_token=None))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # trim_offsets=False: offsets keep leading spaces, so a character-to-token lookup (which is how
    # transformers builds assistant masks) finds a token for every character of a turn.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        eos_token="<|im_end|>",
        pad_token="<|pad|>",
        bos_token=None,
        unk_token=None,
        model_max_length=TOKENIZER_MAX_LENGTH,
    )
    tokenizer.chat_template = CHATML_TEMPLATE
    return tokenizer


def build_tiny_llama(texts: Iterable[str], cfg: TinyModelConfig, seed: int, out_dir: Path) -> Path:
    """Train the tokenizer, build a seeded LlamaForCausalLM from `cfg`, save both into out_dir.

    Reloads the folder with from_pretrained and checks the tokenizer survived (template, encoding);
    the same texts, cfg and seed give the same weights byte for byte.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    if cfg.hidden_size % cfg.num_attention_heads:
        raise ValueError(
            f"train.tiny.hidden_size={cfg.hidden_size} is not divisible by "
            f"train.tiny.num_attention_heads={cfg.num_attention_heads}; change one of them"
        )
    out_dir = Path(out_dir)
    tokenizer = train_tokenizer(texts, cfg.vocab_size)
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|pad|>")
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_attention_heads,
        max_position_embeddings=cfg.max_position_embeddings,
        tie_word_embeddings=True,
        bos_token_id=None,  # the tokenizer adds no bos; ChatML starts every turn with <|im_start|>
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = eos_id
    model.generation_config.pad_token_id = pad_id
    model.generation_config.bos_token_id = None

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)

    reloaded_tokenizer = AutoTokenizer.from_pretrained(out_dir)
    AutoModelForCausalLM.from_pretrained(out_dir, use_safetensors=True)  # raises on missing/mismatched weights
    if reloaded_tokenizer.chat_template != CHATML_TEMPLATE:
        raise RuntimeError(f"{out_dir}: the reloaded tokenizer lost the ChatML chat template")
    before = tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]
    after = reloaded_tokenizer(_PROBE_TEXT, add_special_tokens=False)["input_ids"]
    if before != after:
        raise RuntimeError(
            f"{out_dir}: the reloaded tokenizer ({type(reloaded_tokenizer).__name__}) splits text "
            "differently from the trained one; the saved folder is not usable"
        )
    return out_dir


def load_causal_lm(
    location: str | Path,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype=None,
    attn_implementation: str | None = None,
):
    """(model, tokenizer) from a hub id or a local folder; weights from safetensors only.

    Remote code is only run when pinned by a revision: an unpinned repository could change the code
    that runs here between two runs with the same recipe.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if str(location).startswith("builtin:"):
        raise ValueError(
            f"{location!r} is built, not loaded: build it with build_tiny_llama and load its folder"
        )
    if trust_remote_code and not re.fullmatch(r"[0-9a-f]{40}", revision or ""):
        raise ValueError(
            f"trust_remote_code for {location!r} runs code from the model repository: pin it with "
            "train.revision (a full 40-character commit hash, not a branch) or turn trust_remote_code off"
        )
    require_safetensors(location, "train.model")  # before anything is loaded
    common = {"revision": revision, "trust_remote_code": trust_remote_code}
    tokenizer = AutoTokenizer.from_pretrained(str(location), **common)
    model_kwargs = dict(common)
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation
    try:
        model = AutoModelForCausalLM.from_pretrained(str(location), use_safetensors=True, **model_kwargs)
    except OSError as exc:
        unsafe = missing_safetensors_error(exc, location, "train.model")
        if unsafe is None:
            raise
        raise unsafe from exc
    return model, tokenizer
