"""What the evaluate stage reads: the base and tuned models, their tokenizer, extra prompts, general texts.

Base and tuned are loaded one after the other (`base_then_tuned`); a full model is freed before
the next is loaded, and a LoRA adapter is measured on one loaded base (`disable_adapter()` gives
the base numbers). Both are loaded in one explicit precision whatever dtype their folders were
saved in (`eval_precision`): a bf16 base measured in bf16 against a fine-tuned model saved in fp32
and measured in fp32 would compare two precisions, not two models. Weights load from safetensors
only, without remote code.
"""

from __future__ import annotations

import gc
import json
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from sftflow.tasks.core.weights import UnsafeWeightsError, missing_safetensors_error, require_safetensors
from sftflow.tasks.lib.devices import compute_device

BASE_MODEL, TUNED_MODEL = "evaluate (base model)", "evaluate (tuned model)"  # named in loading errors


# ---------------------------------------------------------------------------------- models --
def eval_precision(device: str) -> tuple[str, str]:
    """(dtype, device) both models are measured in on `device`: bfloat16 on a CUDA device that
    supports it, float32 on any other CUDA device and on CPU (where bf16 matmuls are slow and gain
    nothing here)."""
    if device == "cuda":
        import torch

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


def base_then_tuned(tuned_dir: Path, base_location: str | Path, base_revision: str | None = None,
                    precision: tuple[str, str] | None = None) -> Iterator[tuple[str, Any, Any]]:
    """Yield ("base", model, tokenizer) then ("tuned", model, tokenizer), holding one model at a time.
    A hub base is loaded at `base_revision`, the commit the train stage trained from.

    Both are loaded in `precision` (dtype, device), by default `eval_precision` on the device this
    process computes on; a LoRA adapter's
    weights too. Both are measured with the tuned folder's tokenizer (the same vocabulary as the
    base; it is the one saved with the template that was trained), so the two losses count the same
    tokens.
    """
    import torch
    from transformers import AutoTokenizer

    dtype, device = precision or eval_precision(compute_device())
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


# ---------------------------------------------------------------------------------- inputs --
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


def read_texts(path: Path, limit: int) -> list[str]:
    """The `text` field of the first `limit` rows of a JSONL/JSON/Parquet file (the general corpus).

    Read like a decontamination eval set of format `text`: same file kinds, same errors.
    """
    from sftflow.tasks.lib.eval_files import eval_row_texts, read_eval_rows

    texts: list[str] = []
    for place, row in read_eval_rows(path, f"eval.general_text {path}"):
        texts += eval_row_texts(row, "text", place)
        if len(texts) >= limit:
            break
    return texts[:limit]
