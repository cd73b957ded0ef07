"""Model weights are loaded from safetensors only.

A `pytorch_model.bin` (or .pt/.pth/.ckpt) is a pickle: reading it can run code the file holds.
safetensors files hold tensors and a JSON header, nothing executable. Every loader in tasks/
passes `use_safetensors=True` to from_pretrained, which refuses a folder or hub repository
without safetensors weights; `require_safetensors` turns that refusal into an error that names
the folder and says how to convert it.
"""

from __future__ import annotations

from pathlib import Path

PICKLE_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")


class UnsafeWeightsError(ValueError):
    """A model whose weights exist only in pickle-based files."""


def convert_hint(where: str | Path) -> str:
    return (
        f"sftflow loads model weights from safetensors only. Convert {where} once, where you trust "
        "the files: load it with from_pretrained and save it again with save_pretrained (transformers "
        "writes model.safetensors), then remove the pickle-based weight files"
    )


def pickled_weight_files(folder: Path) -> list[str]:
    """Names of the pickle-based weight files directly in `folder`, when it has no safetensors.

    A folder with any *.safetensors file has safe weights (training_args.bin beside them is not a
    weight file and is never loaded here); a folder without weight files at all gives [].
    """
    folder = Path(folder)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return []
    return sorted(p.name for p in folder.iterdir() if p.is_file() and p.suffix in PICKLE_WEIGHT_SUFFIXES)


def require_safetensors(location: str | Path, what: str) -> None:
    """Refuse a local model folder whose weights are only pickle-based; `what` names the setting.

    A hub id is left to from_pretrained(use_safetensors=True) (see `missing_safetensors_error`).
    """
    pickled = pickled_weight_files(Path(location))
    if pickled:
        raise UnsafeWeightsError(
            f"{what}: the model folder {location} holds its weights only in pickle-based files "
            f"({', '.join(pickled)}), which can run code when loaded. {convert_hint('the folder')}."
        )


def missing_safetensors_error(exc: OSError, location: str | Path, what: str) -> UnsafeWeightsError | None:
    """For an OSError of from_pretrained(use_safetensors=True): an UnsafeWeightsError that says how
    to convert when it failed for want of safetensors weights, else None (re-raise the original)."""
    if "safetensors" not in str(exc):
        return None
    return UnsafeWeightsError(
        f"{what}: {location} has no safetensors weights ({exc}). {convert_hint(location)}, or pick a "
        "hub revision that has model.safetensors."
    )
