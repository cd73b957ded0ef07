"""MODEL_CARD.md rendering from a literal data card and training summary."""

from __future__ import annotations

from sftflow.tasks.lib.model_card import render_data_card, render_model_card

DATA_CARD = {
    "recipe": {"name": "demo", "hash": "r3c1p3"},
    "sources": [
        {"name": "alpaca_sample", "format": "alpaca", "path": "data/samples/alpaca.json", "license": "cc-by-nc-4.0",
         "origin": "synthetic", "n_rows": 120},
        {"name": "oasst", "format": "sharegpt", "hf_dataset": "org/oasst", "license": None, "origin": "human",
         "n_rows": 80},
    ],
    "drops": [
        {"stage": "filter", "reason": "toxic", "n": 3},
        {"stage": "dedup", "reason": "exact_duplicate", "n": 7},
        {"stage": "normalize", "reason": "non_alternating", "n": 2},
    ],
    "mixture": [{"category": "qa", "target_share": 0.6, "realized_share": 0.625, "n_rows": 100, "n_unique": 90,
                 "n_eval": 5},
                {"category": "code", "target_share": 0.4, "realized_share": 0.375, "n_rows": 60, "n_unique": 60,
                 "n_eval": 3}],
    "artifacts": [{"stage": "mix", "key": "mixkey1", "sha256": "abc123"}],
}

SUMMARY = {
    "base_model": "HuggingFaceTB/SmolLM2-135M", "method": "lora",
    "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "target_modules": "all-linear"},
    "template_origin": "builtin:chatml", "max_length": 512, "packing": True, "device": "cuda",
    "attn_implementation": "flash_attention_2",
    "sft": {"learning_rate": 2e-4, "warmup_steps": 0.03, "max_steps": 300, "packing": True, "bf16": True,
            "use_cpu": False},
    "metrics": {"global_step": 300, "first_logged_loss": 2.5, "last_logged_loss": 1.25, "train_runtime_s": 61.0,
                "tokens_processed": 1_000_000, "tokens_per_second": 16393.44, "peak_memory_bytes": 3 * 2**30,
                "resumed_from_checkpoint": None},
    "mask_audit": {"supervised_token_share": 0.4123, "n_zero_supervised": 0, "non_assistant_supervised": 0,
                   "end_of_turn_supervised": True, "n_truncated": 4},
    "roundtrip": {"ok": True, "n_rows_checked": 32, "template_byte_identical": True},
    "n_train_rows": 160, "n_eval_rows": 8,
}


def test_card_lists_sources_drops_in_stage_order_mixture_and_hashes():
    card = render_model_card(DATA_CARD, SUMMARY)
    assert card.startswith("# demo — SFT of `HuggingFaceTB/SmolLM2-135M`\n")
    assert "demonstration model" not in card
    assert "| alpaca_sample | alpaca | data/samples/alpaca.json | synthetic | cc-by-nc-4.0 | 120 |" in card
    assert "| oasst | sharegpt | org/oasst | human | — | 80 |" in card
    drops = [line for line in card.splitlines() if line.startswith(("| normalize |", "| dedup |", "| filter |"))]
    assert drops == ["| normalize | non_alternating | 2 |", "| dedup | exact_duplicate | 7 |", "| filter | toxic | 3 |"]
    assert "| qa | 60.0% | 62.5% | 100 | 90 | 5 |" in card
    assert "| mix | mixkey1 | abc123 |" in card
    assert "recipe `demo` (hash `r3c1p3`)" in card


def test_card_shows_method_settings_checks_and_run_numbers():
    card = render_model_card(DATA_CARD, SUMMARY)
    assert "LoRA adapter" in card and "| LoRA | r=16, alpha=32, dropout=0.05, targets=all-linear |" in card
    assert "| learning_rate | 0.0002 |" in card and "| bf16 | yes |" in card
    assert "| supervised token share | 41.2% |" in card
    assert "| template round trip on the saved folder | yes |" in card
    assert "| first / last logged loss | 2.5 / 1.25 |" in card
    assert "| peak memory (MiB) | 3072 |" in card
    assert "Train rows: 160; held-out eval rows: 8." in card


def test_builtin_model_is_called_a_demonstration_and_missing_data_card_is_said():
    card = render_model_card({}, {**SUMMARY, "base_model": "builtin:tiny-llama", "method": "full", "lora": None})
    assert "**This is a demonstration model.**" in card
    assert "No data card was passed" in card
    assert "| LoRA |" not in card and "(full fine-tuning)" in card
    assert "## Reproducibility" not in card


def test_drops_as_nested_mapping_render_the_same_rows():
    nested = {**DATA_CARD, "drops": {"filter": {"toxic": 3}, "dedup": {"exact_duplicate": 7},
                                     "normalize": {"non_alternating": 2}}}
    assert render_model_card(nested, SUMMARY) == render_model_card(DATA_CARD, SUMMARY)


def test_data_card_has_sources_ledger_drops_mixture_and_hashes():
    card = render_data_card({**DATA_CARD, "run_id": "run42", "overrides": ["mix.seed=7"], "code_version": "cv1",
                             "ledger": [{"stage": "ingest", "n_in": 200, "n_kept": 195, "n_dropped": 5},
                                        {"stage": "dedup", "n_in": 195, "n_kept": 188, "n_dropped": 7}]})
    assert card.startswith("# Data card — recipe `demo`, run `run42`")
    assert "`mix.seed=7`" in card and "`cv1`" in card
    assert "| alpaca_sample | alpaca | data/samples/alpaca.json | synthetic | cc-by-nc-4.0 | 120 |" in card
    assert "| ingest | 200 | 195 | 5 |" in card
    # drops in pipeline order whatever order they came in
    assert card.index("non_alternating") < card.index("exact_duplicate") < card.index("| filter | toxic | 3 |")
    assert "| qa | 60.0% | 62.5% | 100 | 90 | 5 |" in card
    assert "| mix | mixkey1 | abc123 |" in card


def test_data_card_of_an_empty_run_still_renders():
    card = render_data_card({})
    assert "## Sources" in card and "## Ledger" not in card and "overrides: none" in card
