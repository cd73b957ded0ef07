"""The evaluate stage end to end on the tiny Llama of tests/tasks/lib/tiny_chat_lm.py, on CPU, offline."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from sftflow.tasks.core.recipe_training import EvalConfig, JudgeConfig
from sftflow.tasks.core.weights import UnsafeWeightsError
from sftflow.tasks.evaluate import evaluate_model, evaluate_stage_output
from sftflow.tasks.lib.eval_inputs import eval_precision
from sftflow.tasks.lib.ifeval import IF_PROMPTS
from sftflow.tasks.lib.judge import JudgeError
from sftflow.tasks.lib.lm_metrics import heldout_loss
from tests.tasks.lib.tiny_chat_lm import (
    CONVERSATION,
    GENERAL_TEXTS,
    TEMPLATE,
    build_model,
    fine_tune,
    save,
)
from tests.tasks.lib.tiny_chat_lm import one_cpu_thread, tokenizer  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    """base/ (random init), tuned/ (fine-tuned on CONVERSATION), broken/ (lm_head x50: worse everywhere)."""
    root = tmp_path_factory.mktemp("models")
    base = build_model(tokenizer)
    save(base, tokenizer, root / "base")
    save(fine_tune(build_model(tokenizer), tokenizer, CONVERSATION, steps=15), tokenizer, root / "tuned")
    broken = build_model(tokenizer)
    with torch.no_grad():
        broken.lm_head.weight.mul_(50.0)
    save(broken, tokenizer, root / "broken")
    return root


# ------------------------------------------------------------------------------ end to end --
DESIGN_METRICS = {
    "heldout_loss", "heldout_loss_base", "general_ppl", "general_ppl_base", "if_prompt_acc",
    "if_instruction_acc", "mask_supervised_token_share", "mask_zero_supervised_examples",
}
MASK_AUDIT = {"supervised_token_share": {"overall": 0.42, "by_category": {"qa": 0.42}, "by_source": {"s": 0.42}},
              "n_zero_supervised": 0, "n_examples": 1}


def test_evaluate_model_writes_report_with_design_metric_names(folders, tmp_path):
    out = tmp_path / "eval"
    prompts_file = tmp_path / "prompts.jsonl"
    prompts_file.write_text('{"prompt": "Tell me about the moon."}\n\n{"prompt": "hello"}\n', encoding="utf-8")
    cfg = EvalConfig(max_new_tokens=4, batch_size=4, prompts=str(prompts_file))
    result = evaluate_model(folders / "tuned", folders / "base", TEMPLATE, [{"messages": CONVERSATION}],
                            GENERAL_TEXTS, cfg, max_length=128, out_dir=out, mask_audit=MASK_AUDIT)
    values = {m["metric"]: m for m in result["metrics"]}
    assert DESIGN_METRICS <= set(values)
    assert values["heldout_loss"]["value"] < values["heldout_loss_base"]["value"] - 1.0  # it learned the row
    assert values["heldout_loss"]["detail"]["n_examples"] == 1
    assert values["mask_supervised_token_share"]["value"] == 0.42
    assert values["mask_zero_supervised_examples"]["value"] == 0.0
    assert values["if_prompt_acc"]["detail"]["n_prompts"] == len(IF_PROMPTS)
    assert values["general_ppl"]["detail"]["tolerance"] == 0.05
    assert sorted(p.name for p in out.iterdir()) == ["generations.json", "report.json", "report.md"]
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"] == json.loads(json.dumps(result["metrics"]))
    assert report["regressed"] == result["regressed"]
    generations = json.loads((out / "generations.json").read_text())
    assert [g["prompt"] for g in generations[-2:]] == ["Tell me about the moon.", "hello"]
    assert len(generations) == len(IF_PROMPTS) + 2 and {"base", "tuned"} <= set(generations[0])
    assert (out / "report.md").read_text() == result["report_md"]
    assert "| held-out loss (assistant tokens) |" in result["report_md"] and "## Flags" in result["report_md"]

    output = evaluate_stage_output(result, out, model_id="m1")
    dtype, device = eval_precision("cpu")  # this machine; test_evaluate_precision.py pins the choice
    assert output.files == {name: out / name for name in ("report.json", "report.md", "generations.json")}
    assert output.records.num_rows == 0 and output.decisions.num_rows == 0
    assert output.stats == {"model_id": "m1", "metrics": result["metrics"], "regressed": result["regressed"],
                            "gate": result["gate"], "eval_dtype": dtype, "eval_device": device}
    assert report["gate"] == json.loads(json.dumps(result["gate"])) and report["eval_dtype"] == dtype


@pytest.mark.parametrize("tolerance, flagged", [(0.05, True), (1e6, False)])
def test_regression_flag_follows_the_tolerance(folders, tmp_path, tolerance, flagged):
    cfg = EvalConfig(max_new_tokens=2, regression_tolerance=tolerance)
    result = evaluate_model(folders / "broken", folders / "base", TEMPLATE, [], GENERAL_TEXTS, cfg,
                            max_length=128, out_dir=tmp_path)
    values = {m["metric"]: m for m in result["metrics"]}
    assert values["general_ppl"]["value"] > 2 * values["general_ppl_base"]["value"]
    assert result["regressed"] is flagged
    assert values["general_ppl"]["detail"]["regressed"] is flagged
    assert values["general_ppl"]["detail"]["tolerance"] == tolerance
    assert "heldout_loss" not in values and "mask_supervised_token_share" not in values  # no rows, no audit
    assert ("**REGRESSED**" in result["report_md"]) is flagged
    assert result["gate"]["status"] == ("gated" if flagged else "passed")
    assert [c["measured"] for c in result["gate"]["checks"]] == [True, False]  # general measured, held-out not


def test_evaluate_model_measures_a_lora_adapter_against_its_base(folders, tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(folders / "base")
    # init_lora_weights=False: a random B makes the adapter change the output from step 0
    adapted = get_peft_model(base, LoraConfig(r=4, lora_alpha=32, target_modules=["q_proj", "v_proj"],
                                              init_lora_weights=False))
    save(adapted, tokenizer, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_config.json").exists()
    rows = [{"messages": CONVERSATION}]
    result = evaluate_model(tmp_path / "adapter", folders / "base", TEMPLATE, rows, [], EvalConfig(max_new_tokens=2),
                            max_length=128, out_dir=tmp_path / "eval")
    values = {m["metric"]: m["value"] for m in result["metrics"]}
    direct_base = heldout_loss(AutoModelForCausalLM.from_pretrained(folders / "base"), tokenizer, TEMPLATE, rows, 128, 1)
    assert values["heldout_loss_base"] == pytest.approx(direct_base, rel=1e-5)
    assert values["heldout_loss"] != pytest.approx(direct_base, rel=1e-3)
    assert "general_ppl" not in values and result["regressed"] is None  # no general text: not measured


@pytest.mark.parametrize("which", ["tuned", "base"])
def test_a_model_folder_with_only_pytorch_model_bin_is_refused(folders, tmp_path, pickled_copy, from_pretrained_calls,
                                                               which):
    from transformers import AutoModelForCausalLM

    pickled = pickled_copy(folders / which, tmp_path / f"{which}-pickled")
    assert AutoModelForCausalLM.from_pretrained(pickled) is not None  # loadable, if unpickled
    from_pretrained_calls.clear()
    tuned, base = (pickled, folders / "base") if which == "tuned" else (folders / "tuned", pickled)
    with pytest.raises(UnsafeWeightsError) as caught:
        evaluate_model(tuned, base, TEMPLATE, [{"messages": CONVERSATION}], [], EvalConfig(max_new_tokens=1),
                       max_length=128, out_dir=tmp_path / "eval")
    message = str(caught.value)
    assert message.startswith(f"evaluate ({which} model): ")
    assert str(pickled) in message and "pytorch_model.bin" in message
    assert "safetensors only" in message and "Convert the folder" in message
    assert from_pretrained_calls == []  # refused before either model (or the tokenizer) loaded
    assert not (tmp_path / "eval").exists()


def test_a_lora_adapter_with_only_adapter_model_bin_is_refused(folders, tokenizer, tmp_path, pickled_copy,
                                                              from_pretrained_calls):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(folders / "base"),
                             LoraConfig(r=2, lora_alpha=8, target_modules=["q_proj"]))
    save(adapted, tokenizer, tmp_path / "adapter")
    pickled = pickled_copy(tmp_path / "adapter", tmp_path / "adapter-pickled")
    assert (pickled / "adapter_model.bin").is_file() and (pickled / "adapter_config.json").is_file()
    from_pretrained_calls.clear()
    with pytest.raises(UnsafeWeightsError) as caught:
        evaluate_model(pickled, folders / "base", TEMPLATE, [], [], EvalConfig(max_new_tokens=1),
                       max_length=128, out_dir=tmp_path / "eval")
    message = str(caught.value)
    assert str(pickled) in message and "only adapter_model.bin" in message
    assert "adapter_model.safetensors" in message and "PeftModel.save_pretrained" in message
    assert from_pretrained_calls == []


def test_enabled_but_unreachable_judge_fails_before_models_load(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cfg = EvalConfig(judge=JudgeConfig(enabled=True, base_url=f"http://127.0.0.1:{port}/v1", model="j", timeout_seconds=2))
    with pytest.raises(JudgeError, match="unreachable"):
        evaluate_model(tmp_path / "missing", tmp_path / "missing", TEMPLATE, [], [], cfg, 128, tmp_path / "out")


def test_stage_output_requires_the_report_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="report.json, report.md, generations.json missing"):
        evaluate_stage_output({"metrics": [], "regressed": False}, tmp_path, model_id="m1")
