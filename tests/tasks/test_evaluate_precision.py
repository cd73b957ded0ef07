"""Base and tuned are measured in one explicit precision, whatever dtype their folders were saved in."""

from __future__ import annotations

import json

import pytest
import torch

from sftflow.tasks.core.recipe_training import EvalConfig
from sftflow.tasks.evaluate import evaluate_model, evaluate_stage_output
from sftflow.tasks.lib.eval_inputs import base_then_tuned
from sftflow.tasks.lib.lm_metrics import heldout_loss
from tests.tasks.lib.tiny_chat_lm import CONVERSATION, TEMPLATE, build_model, build_tokenizer, fine_tune, save
from tests.tasks.lib.tiny_chat_lm import one_cpu_thread, tokenizer  # noqa: F401 (fixtures)


@pytest.fixture(autouse=True)
def cpu_only(monkeypatch):
    # the choice under test is the CPU one: pin it even where a GPU is present
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="module")
def mixed_folders(tmp_path_factory, tokenizer):
    """base/ saved in bfloat16 (its config says so), tuned/ fine-tuned and saved in float32."""
    root = tmp_path_factory.mktemp("mixed")
    save(build_model(tokenizer).to(torch.bfloat16), tokenizer, root / "base")
    save(fine_tune(build_model(tokenizer), tokenizer, CONVERSATION, steps=5), tokenizer, root / "tuned")
    return root


def _dtypes(model) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters()}


def test_a_bf16_base_and_an_fp32_tuned_model_are_both_measured_in_float32_on_cpu(mixed_folders, tmp_path):
    assert json.loads((mixed_folders / "base" / "config.json").read_text())["dtype"] == "bfloat16"
    assert json.loads((mixed_folders / "tuned" / "config.json").read_text())["dtype"] == "float32"
    for label, model, _tokenizer in base_then_tuned(mixed_folders / "tuned", mixed_folders / "base"):
        assert _dtypes(model) == {torch.float32}, label
        assert {p.device.type for p in model.parameters()} == {"cpu"}, label

    rows = [{"messages": CONVERSATION}]
    result = evaluate_model(mixed_folders / "tuned", mixed_folders / "base", TEMPLATE, rows, [],
                            EvalConfig(max_new_tokens=1), max_length=128, out_dir=tmp_path / "eval")
    values = {m["metric"]: m["value"] for m in result["metrics"]}
    from transformers import AutoModelForCausalLM
    tokenizer = build_tokenizer()
    # the bf16 weights upcast to float32: the base's loss is that of a float32 forward pass
    base_fp32 = AutoModelForCausalLM.from_pretrained(mixed_folders / "base", dtype=torch.float32)
    assert values["heldout_loss_base"] == pytest.approx(heldout_loss(base_fp32, tokenizer, TEMPLATE, rows, 128, 1), rel=1e-6)
    assert (result["eval_dtype"], result["eval_device"]) == ("float32", "cpu")
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert (report["eval_dtype"], report["eval_device"]) == ("float32", "cpu")
    assert "- both measured in float32 on cpu" in result["report_md"]
    stats = evaluate_stage_output(result, tmp_path / "eval", model_id="m").stats
    assert (stats["eval_dtype"], stats["eval_device"]) == ("float32", "cpu")


def test_a_lora_adapter_and_its_base_run_in_one_dtype(mixed_folders, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(mixed_folders / "tuned"),
                             LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"], init_lora_weights=False))
    save(adapted, tokenizer, tmp_path / "adapter")
    # the bf16 base folder under an adapter saved in fp32: everything loads as float32 on CPU
    for label, model, _tokenizer in base_then_tuned(tmp_path / "adapter", mixed_folders / "base"):
        assert _dtypes(model) == {torch.float32}, label
    # and in bfloat16 (the CUDA choice) PEFT's default upcast of the adapter to float32 is off
    for label, model, _tokenizer in base_then_tuned(tmp_path / "adapter", mixed_folders / "base",
                                                    precision=("bfloat16", "cpu")):
        assert _dtypes(model) == {torch.bfloat16}, label
