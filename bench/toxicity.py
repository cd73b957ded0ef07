"""Toxicity scoring throughput: sftflow's DetoxifyScorer against Detoxify's own `predict`.

Both sides load the same checkpoint file, built here offline in detoxify's checkpoint layout (as
tests/tasks/lib/test_detoxify_scorer.py builds its tiny one) but BERT-base-shaped: hidden 768, 12 layers,
12 heads, intermediate 3072, 512 positions, the shape of detoxify's `original` model. No weights
can be downloaded here, so:

- the tokenizer is a WordPiece vocabulary trained on the benchmark's own texts (the tokenizers
  library), saved with BertTokenizer(vocab=...) and a 512-token limit like bert-base-uncased's;
- the weights are random, from a fixed seed. A random BERT maps all texts to nearly the same
  [CLS] vector, so its scores bunch up and a keep/drop comparison would be decided by noise. The
  classifier head is therefore rescaled once, from a fixed seeded subset of the texts scored in
  fp32: each output's weights are multiplied so that its logit spreads with standard deviation
  LOGIT_SPREAD across those texts, and its bias is set so that a share TOXIC_SHARE of them scores
  above 0.5. The checkpoint then drops some texts and keeps most, with scores spread across
  (0, 1), and the decision agreement below is a meaningful test of any change in precision.

Texts: the user and assistant turns of seeded rows of /work/shared/data/alpaca_en_demo.json, in
file order (the order the toxicity stage scores them: instruction(+input), output, ...), whose
lengths run from a few tokens to the 512-token limit; a seeded synthetic corpus with an
Alpaca-like length mix when that file is absent. FULL_TEXTS of them by default: Detoxify.predict
on BERT-base is slow on a small CPU, and the run should stay near ten minutes. `--quick` runs
QUICK_TEXTS texts through a narrower, shallower BERT (BERT_QUICK, same tokenizer and 512
positions) in a minute or two: a check that the benchmark works, not the claim.

Peer: `Detoxify(checkpoint=..., huggingface_config_path=...).predict(batch)` on consecutive
batches of PEER_BATCH texts in input order, as detoxify's README calls it. Ours: DetoxifyScorer
with the ToxicityConfig default batch size and max_batch_tokens, in fp32 like the peer
(tokenized once, batched by token count, longest first). The texts are cut into ROUNDS rounds,
each one DetoxifyScorer.score call (the stage makes one call per table, so its batches sort over
more texts than a round's); each round is scored by both sides back to back, the side that goes
first alternating, so that load from other processes on the machine hits both alike. Both run in
this one process with the same torch thread count.

Long texts: Detoxify.predict truncates a text at the 512-token limit; DetoxifyScorer never does,
it scores the text's token windows and takes the max (`texts_over_limit` counts such texts, whose
scores may then differ from the peer's). Apart from the ratios, the run also times the filter
stage's own path once, `score_turns(texts, ours, "sentence")` (every sentence a window), and
reports it as `ours_sentence_windows` (a detail, not a ratio: the peer has no such mode).

Prints `RATIO toxicity_samples_per_s_vs_detoxify <ours/peer> 3 ...` and
`RATIO toxicity_decision_agreement <share> 0.99 ...` (drop when score >= the ToxicityConfig
default threshold, ours against Detoxify's fp32 scores), and writes build/bench/toxicity.json.

    .venv/bin/python bench/toxicity.py [--quick] [--samples N] [--round-size N] [--threads N]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, Ratio, report

sys.path.insert(0, str(REPO))

from sftflow.tasks.core.recipe_filters import ToxicityConfig  # noqa: E402
from sftflow.tasks.lib.detoxify_scorer import DetoxifyScorer  # noqa: E402
from sftflow.tasks.lib.toxicity import score_turns  # noqa: E402

ALPACA = REPO.parent / "shared" / "data" / "alpaca_en_demo.json"
CLASSES = ["toxic", "severe_toxic", "obscene", "threat", "insult", "identity_hate"]  # detoxify original
BERT_BASE = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                 max_position_embeddings=512)
BERT_QUICK = dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  max_position_embeddings=512)
VOCAB_SIZE = 30522  # bert-base-uncased's; the trainer stops earlier when the corpus is small
MAX_TOKENS = 512
SEED = 0
LOGIT_SPREAD = 2.0  # std of each output's logit across texts: scores from about 0.1 to 0.9 within 1 std
TOXIC_SHARE = 0.2  # share of the calibration texts scoring above 0.5
CALIBRATION_TEXTS = 64
PRECISION = "fp32"  # DetoxifyScorer runs the checkpoint as stored, as detoxify does
PEER_BATCH = 32  # detoxify's README passes lists; 32 is a common batch for BERT-base on CPU
# Detoxify.predict on BERT-base pads every text of a batch to its longest (up to 512 tokens), which
# on a small CPU makes it slow: the full run's size keeps it near ten minutes.
FULL_TEXTS = 400
QUICK_TEXTS = 300
ROUNDS = 2  # each round is one DetoxifyScorer.score call; the stage makes one per table, over more texts
GOAL_SPEEDUP = 3.0
GOAL_AGREEMENT = 0.99


# ------------------------------------------------------------------------------------- texts --
def alpaca_pairs() -> list[list[str]]:
    """Per row: the user turn (formatted as tasks/lib/formats.py formats it) and the assistant turn."""
    pairs = []
    for row in json.loads(ALPACA.read_text(encoding="utf-8")):
        extra = row.get("input") or ""
        prompt = f"{row['instruction']}\n\n{extra}" if extra.strip() else row["instruction"]
        pairs.append([prompt, row["output"]])
    return pairs


def synthetic_texts(n: int, seed: int = SEED) -> list[str]:
    """Alternating short prompts and longer, long-tailed responses from a fixed word list."""
    rng = random.Random(seed)
    words = ("the a of to and in is that for it as with was on be by this are or from at which an "
             "explain write list describe give example data model water energy city history people "
             "system language number time process method result value answer question idea plan "
             "story friend school market health research design simple important different").split()
    texts = []
    for i in range(n):
        length = int(rng.lognormvariate(2.5, 0.5)) if i % 2 == 0 else int(rng.lognormvariate(4.3, 0.8))
        sentence = [rng.choice(words) for _ in range(max(1, min(length, 450)))]
        texts.append(" ".join(sentence).capitalize() + ".")
    return texts


def benchmark_texts(n: int) -> tuple[list[str], str]:
    """n texts: whole rows (prompt, then answer) drawn with a fixed seed, kept in file order.

    Drawn rather than the first rows, so that a run of a few hundred texts has the length mix of
    the whole file.
    """
    if ALPACA.is_file():
        pairs = alpaca_pairs()
        source = f"{ALPACA.name} (user and assistant turns of seeded rows, file order)"
    else:
        flat = synthetic_texts(2 * ((n + 1) // 2))
        pairs = [flat[i : i + 2] for i in range(0, len(flat), 2)]
        source = "synthetic (seeded, Alpaca-like lengths)"
    rows = sorted(random.Random(SEED).sample(range(len(pairs)), min(len(pairs), (n + 1) // 2)))
    texts = [t for r in rows for t in pairs[r] if t.strip()]
    while len(texts) < n:  # more texts asked for than the file holds: repeat it
        texts += texts[: n - len(texts)]
    return texts[:n], source


# -------------------------------------------------------------------------------- checkpoint --
def build_checkpoint(root: Path, texts: list[str], shape: dict) -> tuple[Path, Path]:
    """A BERT-base-shaped detoxify checkpoint and its local HF config folder, built offline."""
    import torch
    from tokenizers import BertWordPieceTokenizer
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizer

    folder = root / "bert-base-random"
    trainer = BertWordPieceTokenizer(lowercase=True)
    trainer.train_from_iterator(texts, vocab_size=VOCAB_SIZE, min_frequency=1)
    vocab = trainer.get_vocab()
    BertTokenizer(vocab=vocab, do_lower_case=True, model_max_length=MAX_TOKENS).save_pretrained(folder)
    config = BertConfig(vocab_size=len(vocab), num_labels=len(CLASSES), **shape)
    config.save_pretrained(folder)

    torch.manual_seed(SEED)
    model = BertForSequenceClassification(config).eval()
    spread_classifier(model, BertTokenizer.from_pretrained(folder), texts)
    checkpoint = {
        "config": {
            "arch": {"args": {"model_type": str(folder), "model_name": "BertForSequenceClassification",
                              "tokenizer_name": "BertTokenizer", "num_classes": len(CLASSES)}},
            "dataset": {"args": {"classes": CLASSES}},
        },
        "state_dict": model.state_dict(),
    }
    path = root / "bert-base-random.ckpt"
    torch.save(checkpoint, path)
    return path, folder


def spread_classifier(model, tokenizer, texts: list[str]) -> None:
    """Rescale the head so each output's logit spreads across texts (see the module docstring)."""
    import torch

    sample = sorted(random.Random(SEED).sample(texts, min(CALIBRATION_TEXTS, len(texts))), key=len)
    with torch.inference_mode():
        logits = torch.cat([
            model(**tokenizer(sample[i : i + 8], return_tensors="pt", padding=True, truncation=True)).logits
            for i in range(0, len(sample), 8)
        ])
        head = model.classifier
        centred = logits - head.bias
        scale = LOGIT_SPREAD / centred.std(dim=0)
        head.weight.mul_(scale[:, None])
        head.bias.copy_(-torch.quantile(centred * scale, 1 - TOXIC_SHARE, dim=0))


# ---------------------------------------------------------------------------------- measuring --
def peer_scores(detox, texts: list[str]) -> list[float]:
    scores: list[float] = []
    for start in range(0, len(texts), PEER_BATCH):
        result = detox.predict(texts[start : start + PEER_BATCH])["toxicity"]
        scores += result if isinstance(result, list) else [result]
    return scores


def padded_tokens(lengths: list[int], batch_size: int, round_size: int) -> int:
    """Rows times padded width over the peer's batches: consecutive texts within each round."""
    total = 0
    for start in range(0, len(lengths), round_size):
        group = lengths[start : start + round_size]
        total += sum(len(group[i : i + batch_size]) * max(group[i : i + batch_size])
                     for i in range(0, len(group), batch_size))
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few hundred texts instead of the full set")
    parser.add_argument("--samples", type=int, default=None,
                        help=f"texts to score (default {FULL_TEXTS}, quick {QUICK_TEXTS})")
    parser.add_argument("--round-size", type=int, default=None, help="texts per interleaved round")
    parser.add_argument("--threads", type=int, default=None, help="torch threads for both sides")
    args = parser.parse_args()
    n = args.samples or (QUICK_TEXTS if args.quick else FULL_TEXTS)
    round_size = args.round_size or (n + ROUNDS - 1) // ROUNDS
    shape = BERT_QUICK if args.quick else BERT_BASE
    shape_name = (f"BERT {shape['num_hidden_layers']} layers x {shape['hidden_size']}"
                  + (" (BERT-base shape)" if shape == BERT_BASE else " (quick shape)"))

    import torch
    from detoxify import Detoxify

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    texts, source = benchmark_texts(n)
    defaults = ToxicityConfig()

    with tempfile.TemporaryDirectory(prefix="sftflow-bench-toxicity-") as tmp:
        started = time.perf_counter()
        checkpoint, folder = build_checkpoint(Path(tmp), texts, shape)
        digest = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
        print(f"checkpoint built in {time.perf_counter() - started:.1f} s", flush=True)
        peer = Detoxify(checkpoint=str(checkpoint), huggingface_config_path=str(folder))
        ours = DetoxifyScorer(str(checkpoint), str(folder), batch_size=defaults.batch_size,
                              checkpoint_sha256=digest, max_batch_tokens=defaults.max_batch_tokens)
        # First calls pay one-off costs (allocator, kernels); neither side is timed on them.
        peer_scores(peer, texts[:PEER_BATCH])
        ours.score(texts[:PEER_BATCH])

        peer_all: list[float] = []
        ours_all: list[float] = []
        peer_s = ours_s = 0.0
        rounds = [texts[i : i + round_size] for i in range(0, len(texts), round_size)]
        for index, chunk in enumerate(rounds):
            sides = ["peer", "ours"] if index % 2 == 0 else ["ours", "peer"]
            for side in sides:
                t0 = time.perf_counter()
                if side == "peer":
                    got = peer_scores(peer, chunk)
                    peer_s += time.perf_counter() - t0
                    peer_all += got
                else:
                    got = ours.score(chunk)
                    ours_s += time.perf_counter() - t0
                    ours_all += got
            print(f"round {index + 1}/{len(rounds)}: peer {len(peer_all) / peer_s:.1f} samples/s, "
                  f"ours {len(ours_all) / ours_s:.1f} samples/s", flush=True)
        t0 = time.perf_counter()
        by_sentence = score_turns(texts, ours, "sentence")
        sentence_s = time.perf_counter() - t0

    threshold = ToxicityConfig(backend="detoxify").effective_threshold  # 0.5, detoxify's default
    agree = sum((a >= threshold) == (b >= threshold) for a, b in zip(ours_all, peer_all)) / len(texts)
    peer_rate, ours_rate = len(texts) / peer_s, len(texts) / ours_s
    tokens = [len(ids) for ids in ours._detox.tokenizer(texts, truncation=True)["input_ids"]]
    untruncated = [len(ids) for ids in ours._encode(texts)["input_ids"]]
    details = {
        "texts": len(texts), "text_source": source, "rounds": len(rounds), "round_size": round_size,
        "torch_threads": threads, "peer_batch_size": PEER_BATCH, "ours_batch_size": defaults.batch_size,
        "ours_max_batch_tokens": defaults.max_batch_tokens,
        "ours_precision": PRECISION, "peer_precision": PRECISION,
        "peer_samples_per_s": round(peer_rate, 2), "ours_samples_per_s": round(ours_rate, 2),
        "peer_seconds": round(peer_s, 2), "ours_seconds": round(ours_s, 2),
        "threshold": threshold, "peer_dropped": sum(s >= threshold for s in peer_all),
        "ours_dropped": sum(s >= threshold for s in ours_all),
        "max_abs_score_difference": round(max(abs(a - b) for a, b in zip(ours_all, peer_all)), 5),
        "texts_over_limit": sum(n > MAX_TOKENS for n in untruncated),
        "ours_sentence_windows": {"windows": sum(r.n_windows for r in by_sentence),
                                  "seconds": round(sentence_s, 2),
                                  "samples_per_s": round(len(texts) / sentence_s, 2),
                                  "dropped": sum(r.score is not None and r.score >= threshold for r in by_sentence)},
        "tokens_per_text": {"mean": round(sum(tokens) / len(tokens), 1), "max": max(tokens),
                            "median": sorted(tokens)[len(tokens) // 2]},
        # Token positions each side runs through the model: what sorting saves, before any other cost.
        "real_tokens": sum(tokens), "peer_padded_tokens": padded_tokens(tokens, PEER_BATCH, round_size),
        "ours_padded_tokens": sum(len(b) * tokens[b[0]] for start in range(0, len(texts), round_size)
                                  for b in ours._batches(sorted(range(start, min(start + round_size, len(texts))),
                                                                key=tokens.__getitem__, reverse=True), tokens)),
        "model": {"shape": shape_name, **shape, "vocab_size": ours._detox.model.config.vocab_size,
                  "num_labels": len(CLASSES),
                  "weights": f"random, seed {SEED}, head rescaled to logit std {LOGIT_SPREAD}, "
                             f"{TOXIC_SHARE:.0%} of calibration texts above 0.5"},
    }
    print(json.dumps({k: v for k, v in details.items() if k != "model"}), flush=True)
    ratios = [
        Ratio("toxicity_samples_per_s_vs_detoxify", ours_rate / peer_rate, GOAL_SPEEDUP,
              note=f"{len(texts)} {source.split(' ')[0]} turns, {shape_name}, {threads} threads: ours "
                   f"{ours_rate:.1f}/s ({PRECISION}, batch {defaults.batch_size} / {defaults.max_batch_tokens} tokens, "
                   f"token-sorted) vs "
                   f"Detoxify.predict {peer_rate:.1f}/s (fp32, batches of {PEER_BATCH} in input order)"),
        Ratio("toxicity_decision_agreement", agree, GOAL_AGREEMENT,
              note=f"drop at score >= {threshold}: ours vs Detoxify.predict on the same checkpoint, "
                   f"{details['peer_dropped']} of {len(texts)} dropped by Detoxify"),
    ]
    report("toxicity", ratios, details, quick=args.quick, libraries=("detoxify", "torch", "transformers"))


if __name__ == "__main__":
    main()
