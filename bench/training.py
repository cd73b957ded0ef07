"""Training throughput: our SFT step with BFD packing against the padded baseline, real tokens/s.

Both configurations run in this process, alternating (padded, packed, padded, ...: `--repeats`
times each, the fastest run of each counts, since other work on a shared machine only slows a
run down), on the same data (the Alpaca-format
`../shared/data/alpaca_en_demo.json`, each row turned into a user turn — instruction, plus a
blank line and the input when there is one — and an assistant turn), the same model
initialisation (the same seed, the same saved folder), the same tokenizer and ChatML template
with `{% generation %}` markers, the same max_length and `assistant_only_loss=True`:

- `packed`: the project's configuration, SFTConfig keyword arguments from sftflow.tasks.lib.train_settings.sft_kwargs
  with packing on, i.e. `packing_strategy="bfd"`, which turns padding-free on: every batch is one
  row of concatenated conversations, kept apart by position ids.
- `padded`: the same kwargs with packing off: TRL pads each batch to its longest conversation.

Fair per-step budget. The padded run takes B conversations per step (the recipe default,
per_device_train_batch_size). A packed row holds up to max_length tokens, so the packed run takes
P rows per step, with P chosen so a step carries about as many REAL tokens as a padded step:
P = round(B * mean conversation tokens / mean real tokens per packed row), both means measured on
the processed datasets. Goals are then in real tokens per second, so whichever run happens to
carry a few more tokens per step gets no credit for it.

Counting. A wrapper around the trainer's data collator counts, for every batch it builds, the
real tokens (the summed lengths of the tokenized conversations that went in: attention-mask ones
for padded batches, every position of a padding-free batch) and the tokens handed to the model
(`input_ids.numel()`, padding included); the counts ride along in the batch, so they survive
dataloader worker processes, and a trainer subclass takes them out before the forward pass.
A TrainerCallback takes the wall time from on_step_begin to on_step_end of every optimizer step
(forward, backward, clipping, optimizer; on CUDA after a synchronize); the batch was fetched
and collated before on_step_begin, so data loading is not in it. The first warm-up steps are
dropped. Padding waste = pad tokens / tokens handed to the model over the measured steps.

On CPU the model is the project's own `builtin:tiny-llama` (tasks/lib/tiny_model.py, recipe-default
shape). With CUDA it is a ~0.5B-parameter Llama-shaped model built from CUDA_SHAPE (below) with
bf16 mixed precision as the project trains (fp32 master weights, bf16 autocast), and the report
adds MFU = 6 * parameters * real tokens/s / the GPU's dense bf16 peak (PEAK_BF16_FLOPS; attention
score FLOPs are not counted, as usual for this figure).

    .venv/bin/python bench/training.py [--quick] [--max-length N] [--batch-size B] [--steps N]
"""

from __future__ import annotations

import os

# Offline before transformers/datasets/trl are imported: nothing here may reach the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from common import REPO, Ratio, report  # noqa: E402

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DATA = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"
GOAL_RATIO = 2.0
GOAL_WASTE = 0.05
SEED = 0

# The CUDA model: Llama-shaped, ~0.5B parameters with a 32k vocabulary (tied embeddings). The
# tokenizer trained on the demo data uses the first CUDA_TOKENIZER_VOCAB ids only; the rest of the
# embedding stays unused, but the output layer still computes over all 32k, like a real model's.
CUDA_SHAPE = {"hidden_size": 1536, "intermediate_size": 4096, "num_hidden_layers": 16,
              "num_attention_heads": 16, "num_key_value_heads": 16, "vocab_size": 32000}
CUDA_TOKENIZER_VOCAB = 8192

# Dense (no sparsity) bf16 tensor-core peak per GPU, FLOP/s, from the vendors' data sheets; chosen
# by a substring of torch.cuda.get_device_name(). Unknown GPUs get no MFU line.
PEAK_BF16_FLOPS = (
    ("H100 PCIe", 756e12),
    ("H100", 989e12),  # SXM / HBM3
    ("H200", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("A10G", 70e12),
    ("L4", 121e12),
)


def peak_bf16_flops(device_name: str) -> float | None:
    for key, flops in PEAK_BF16_FLOPS:
        if key in device_name:
            return flops
    return None


# ------------------------------------------------------------------------------------- data --
def alpaca_conversations(path: Path) -> list[dict[str, Any]]:
    """Alpaca rows as {"messages": [user, assistant]} (instruction + blank line + input, output)."""
    if not path.is_file():
        sys.exit(f"{path}: no such file (the benchmark needs ../shared/data/alpaca_en_demo.json)")
    rows = json.loads(path.read_text(encoding="utf-8"))
    conversations = []
    for row in rows:
        prompt = row["instruction"].strip()
        if (row.get("input") or "").strip():
            prompt = f"{prompt}\n\n{row['input'].strip()}"
        if prompt and (row.get("output") or "").strip():
            conversations.append({"messages": [{"role": "user", "content": prompt},
                                               {"role": "assistant", "content": row["output"]}]})
    return conversations


# ------------------------------------------------------------------------------------ model --
def build_model_factory(conversations: list[dict[str, Any]], device: str, workdir: Path):
    """(make_model, tokenizer, description): make_model() returns the same initial weights every call."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from sftflow.tasks.core.recipe_training import TinyModelConfig
    from sftflow.tasks.lib.tiny_model import build_tiny_llama, conversation_texts, train_tokenizer

    if device == "cpu":
        tiny = TinyModelConfig()
        folder = build_tiny_llama(conversation_texts(conversations), tiny, SEED, workdir / "tiny-llama")
        tokenizer = AutoTokenizer.from_pretrained(folder)

        def make_model():
            return AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa", dtype=torch.float32,
                                                        use_safetensors=True)

        return make_model, tokenizer, {"model": "builtin:tiny-llama", **tiny.model_dump()}

    from transformers import LlamaConfig, LlamaForCausalLM

    from sftflow.tasks.lib.train_settings import attn_implementation
    from sftflow.tasks.core.recipe_training import TrainConfig

    tokenizer = train_tokenizer(conversation_texts(conversations), CUDA_TOKENIZER_VOCAB)
    config = LlamaConfig(**CUDA_SHAPE, max_position_embeddings=4096, tie_word_embeddings=True,
                         bos_token_id=None, eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"),
                         pad_token_id=tokenizer.pad_token_id)
    attention = attn_implementation(TrainConfig(model="local"), "cuda")  # the project's choice
    config._attn_implementation = attention

    def make_model():
        torch.manual_seed(SEED)
        return LlamaForCausalLM(config)  # fp32 master weights; SFTConfig(bf16=True) autocasts

    return make_model, tokenizer, {"model": "llama-from-config", **CUDA_SHAPE, "attn_implementation": attention,
                                   "tokenizer_vocab": len(tokenizer)}


# ---------------------------------------------------------------------------------- counting --
REAL_KEY, TOTAL_KEY = "bench_real_tokens", "bench_model_tokens"


class CountingCollator:
    """Wraps a collator: adds how many real tokens and how many model tokens the batch holds."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, examples):
        import torch

        batch = self.inner(examples)
        real = sum(len(example["input_ids"]) for example in examples)
        batch[REAL_KEY] = torch.tensor(real)
        batch[TOTAL_KEY] = torch.tensor(batch["input_ids"].numel())
        return batch


def counting_trainer_class():
    from trl import SFTTrainer

    class CountingSFTTrainer(SFTTrainer):
        """SFTTrainer that takes the collator's counts out of each batch before the forward pass."""

        step_real = 0
        step_total = 0

        def training_step(self, model, inputs, *args, **kwargs):
            self.step_real += int(inputs.pop(REAL_KEY))
            self.step_total += int(inputs.pop(TOTAL_KEY))
            return super().training_step(model, inputs, *args, **kwargs)

    return CountingSFTTrainer


def step_timer(trainer, cuda: bool):
    import torch
    from transformers import TrainerCallback

    class StepTimer(TrainerCallback):
        def __init__(self):
            self.steps: list[dict[str, float]] = []
            self._started = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            trainer.step_real = trainer.step_total = 0
            self._started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if cuda:
                torch.cuda.synchronize()
            self.steps.append({"seconds": time.perf_counter() - self._started,
                               "real_tokens": trainer.step_real, "model_tokens": trainer.step_total})

    return StepTimer()


# -------------------------------------------------------------------------------------- runs --
def sft_config(packing: bool, batch_size: int, max_length: int, steps: int, device: str, mean_tokens: float,
               output_dir: Path):
    from trl import SFTConfig

    from sftflow.tasks.core.recipe_training import TrainConfig
    from sftflow.tasks.lib.train_settings import sft_kwargs

    cfg = TrainConfig(model="builtin:tiny-llama" if device == "cpu" else "local", max_length=max_length,
                      packing=packing, per_device_train_batch_size=batch_size, max_steps=steps, seed=SEED,
                      save_steps=10**6, logging_steps=10**6)
    kwargs = sft_kwargs(cfg, device, mean_tokens)
    kwargs.update(output_dir=str(output_dir), assistant_only_loss=True, report_to=[], save_strategy="no",
                  logging_first_step=False, disable_tqdm=True)
    return SFTConfig(**kwargs), kwargs


def make_trainer(make_model, tokenizer, dataset, config):
    trainer = counting_trainer_class()(model=make_model(), args=config, train_dataset=dataset,
                                       processing_class=tokenizer)
    trainer.data_collator = CountingCollator(trainer.data_collator)
    return trainer


def packed_row_stats(trainer) -> dict[str, float]:
    """Rows, real tokens per row and bin fill of the BFD-packed dataset."""
    lengths = trainer.train_dataset["seq_lengths"]
    max_length = trainer.args.max_length
    real = [sum(row) for row in lengths]
    return {"rows": len(real), "mean_real_tokens_per_row": statistics.mean(real),
            "bin_fill": sum(real) / (len(real) * max_length),
            "mean_conversations_per_row": statistics.mean(len(row) for row in lengths)}


def run(name: str, trainer, warmup: int, cuda: bool) -> dict[str, Any]:
    timer = step_timer(trainer, cuda)
    trainer.add_callback(timer)
    started = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - started
    measured = timer.steps[warmup:]
    seconds = sum(s["seconds"] for s in measured)
    real = sum(s["real_tokens"] for s in measured)
    total = sum(s["model_tokens"] for s in measured)
    result = {
        "run": name, "steps_measured": len(measured), "warmup_steps": warmup, "seconds": round(seconds, 4),
        "real_tokens": real, "model_tokens": total, "real_tokens_per_s": real / seconds if seconds else 0.0,
        "model_tokens_per_s": total / seconds if seconds else 0.0,
        "padding_waste": (total - real) / total if total else 0.0,
        "real_tokens_per_step": real / len(measured) if measured else 0.0,
        "step_seconds_median": statistics.median(s["seconds"] for s in measured) if measured else None,
        "train_call_wall_s": round(wall, 2),
    }
    print(f"{name}: {len(measured)} steps in {seconds:.2f} s, {result['real_tokens_per_step']:.0f} real tokens/step, "
          f"{result['real_tokens_per_s']:.0f} real tok/s, {result['model_tokens_per_s']:.0f} model tok/s, "
          f"padding waste {result['padding_waste']:.3f}", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short max_length, few steps (about a minute on CPU)")
    parser.add_argument("--max-length", type=int, default=None, help="default 1024 (quick: 512)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="padded conversations per step (default: the recipe default, 8)")
    parser.add_argument("--steps", type=int, default=None, help="measured optimizer steps (default 30, quick 8)")
    parser.add_argument("--warmup", type=int, default=None, help="steps dropped first (default 3, quick 1)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="runs of each configuration, alternating; the fastest counts (default 3, quick 2)")
    args = parser.parse_args()

    import datasets
    import torch
    import transformers
    from datasets import Dataset

    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()

    from sftflow.tasks.core.recipe_training import TrainConfig

    cuda = torch.cuda.is_available()
    device = "cuda" if cuda else "cpu"
    max_length = args.max_length or (512 if args.quick else 1024)
    batch = args.batch_size or TrainConfig().per_device_train_batch_size
    steps = args.steps or (6 if args.quick else 30)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    repeats = args.repeats or (2 if args.quick else 3)

    conversations = alpaca_conversations(DATA)
    with tempfile.TemporaryDirectory(prefix="sftflow-bench-train-") as tmp:
        workdir = Path(tmp)
        make_model, tokenizer, model_info = build_model_factory(conversations, device, workdir)
        dataset = Dataset.from_list(conversations)
        total_steps = warmup + steps

        # A probe with packing gives the conversation lengths (seq_lengths of its rows, after
        # truncation) and the real tokens a packed row holds. Trainers are built just before they
        # train: building one resets the accelerate state an earlier one relies on.
        probe_cfg, _ = sft_config(True, 1, max_length, total_steps, device, 0.0, workdir / "probe")
        probe = make_trainer(make_model, tokenizer, dataset, probe_cfg)
        packing = packed_row_stats(probe)
        lengths = [n for row in probe.train_dataset["seq_lengths"] for n in row]
        n_params = sum(p.numel() for p in probe.model.parameters())
        del probe
        mean_tokens = statistics.mean(lengths)
        # Packed rows per step: as many real tokens per step as B padded conversations.
        rows = max(1, round(batch * mean_tokens / packing["mean_real_tokens_per_row"]))
        padded_cfg, padded_kwargs = sft_config(False, batch, max_length, total_steps, device, mean_tokens,
                                               workdir / "padded")
        packed_cfg, packed_kwargs = sft_config(True, rows, max_length, total_steps, device, mean_tokens,
                                               workdir / "packed")
        print(f"{device}: {len(lengths)} conversations, mean {mean_tokens:.0f} tokens (max_length {max_length}); "
              f"padded batch {batch} conversations, packed batch {rows} rows of <= {max_length} tokens "
              f"(BFD fill {packing['bin_fill']:.3f}); {n_params / 1e6:.1f}M parameters", flush=True)

        # ABAB...: each configuration runs `repeats` times, alternating, and its fastest run counts
        # (other work on a shared machine only ever slows a run down).
        runs: dict[str, list[dict[str, Any]]] = {"padded": [], "bfd_packed": []}
        configs = {"padded": padded_cfg, "bfd_packed": packed_cfg}
        for _ in range(repeats):
            for name, config in configs.items():
                torch.manual_seed(SEED)
                runs[name].append(run(name, make_trainer(make_model, tokenizer, dataset, config), warmup, cuda))
                if cuda:
                    torch.cuda.empty_cache()
        padded_result, packed_result = (max(runs[name], key=lambda r: r["real_tokens_per_s"]) for name in configs)

    speedup = packed_result["real_tokens_per_s"] / padded_result["real_tokens_per_s"]
    details: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "torch_threads": torch.get_num_threads(),
        "data": str(DATA.relative_to(REPO.parent)) if DATA.is_relative_to(REPO.parent) else str(DATA),
        "conversations": len(lengths), "mean_tokens": round(mean_tokens, 1), "max_tokens": max(lengths),
        "max_length": max_length, "padded_batch_conversations": batch, "packed_batch_rows": rows,
        "packed_dataset": packing, "model": model_info, "parameters": n_params,
        "sft_kwargs": {"padded": padded_kwargs, "packed": packed_kwargs},
        "repeats": repeats, "best": {"padded": padded_result, "bfd_packed": packed_result}, "runs": runs,
    }
    ratios = [
        Ratio("bfd_packed_vs_padded_tokens_per_s", speedup, GOAL_RATIO,
              note=f"{device}: real (non-pad) tokens/s, BFD padding-free {packed_result['real_tokens_per_s']:.0f} vs "
                   f"padded {padded_result['real_tokens_per_s']:.0f}; {rows} packed rows vs {batch} conversations "
                   f"per step, max_length {max_length}, {steps} steps after {warmup} warm-up, best of {repeats}"),
        Ratio("bfd_padding_waste", packed_result["padding_waste"], GOAL_WASTE, higher_is_better=False,
              note=f"pad tokens / tokens given to the model in the packed run (padded run: "
                   f"{padded_result['padding_waste']:.3f}; BFD bin fill {packing['bin_fill']:.3f})"),
    ]
    if cuda:
        peak = peak_bf16_flops(details["device"])
        for result in (padded_result, packed_result):
            result["mfu"] = 6 * n_params * result["real_tokens_per_s"] / peak if peak else None
        details["peak_bf16_flops"] = peak
        if peak:
            print(f"MFU (6 * {n_params / 1e6:.0f}M params * real tok/s / {peak / 1e12:.0f} TFLOP/s): "
                  f"padded {padded_result['mfu']:.3f}, bfd_packed {packed_result['mfu']:.3f}", flush=True)
    report("training", ratios, details, quick=args.quick, libraries=("torch", "transformers", "trl"))


if __name__ == "__main__":
    main()
