"""Evaluation on a tiny Llama built here (hidden 32, 2 layers, ~300-token BPE), on CPU, offline."""

from __future__ import annotations

import json
import math
import socket

import pytest
import torch

from tasks.core.recipe import EvalConfig, JudgeConfig
from tasks.core.weights import UnsafeWeightsError
from tasks.evaluate import (
    IGNORE_INDEX,
    _base_then_tuned,
    conversation_labels,
    evaluate_model,
    eval_precision,
    evaluate_stage_output,
    generate_responses,
    generate_token_ids,
    heldout_loss,
    load_prompts,
    perplexity,
)
from tasks.lib.ifeval import IF_PROMPTS
from tasks.lib.judge import JudgeError

# ChatML with generation markers: the assistant content and its <|im_end|> are supervised.
TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'assistant' -%}"
    "{{ '<|im_start|>assistant\\n' }}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{{ '\\n' }}"
    "{%- else -%}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{ '<|im_start|>assistant\\n' }}{%- endif -%}"
)
CORPUS = [
    "the cat sat on the mat and looked at the moon.",
    "what is the capital of france? the capital of france is paris.",
    "write a short poem about rain. rain falls soft on the quiet town.",
    "hello world, the quick brown fox jumps over the lazy dog.",
]
CONVERSATION = [
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."},
]
OTHER = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Write about rain."},
    {"role": "assistant", "content": "Rain falls soft."},
    {"role": "user", "content": "And the moon?"},
    {"role": "assistant", "content": "The moon looked at the cat."},
]
GENERAL_TEXTS = ["the quick brown fox jumps over the lazy dog.", "a short poem about the quiet town at night."]


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    core.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|pad|>")
    tokenizer.chat_template = TEMPLATE
    return tokenizer


def build_model(tokenizer, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def fine_tune(model, tokenizer, messages, steps: int, lr: float = 1e-2):
    """Plain torch: a few Adam steps on the assistant tokens of one conversation."""
    ids, labels = conversation_labels(tokenizer, TEMPLATE, messages, max_length=128)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module", autouse=True)
def one_cpu_thread():
    # the tensors here are tiny: with several threads, synchronisation costs more than the math
    # (up to 40x slower on a busy 2-core machine), so this module runs torch on one thread
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def model(tokenizer):
    return build_model(tokenizer)


def save(model, tokenizer, folder):
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


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


# --------------------------------------------------------------------------------- labels --
def test_labels_cover_exactly_the_assistant_content_and_end_of_turn(tokenizer):
    ids, labels = conversation_labels(tokenizer, TEMPLATE, OTHER, max_length=512)
    supervised = [token for token in labels if token != IGNORE_INDEX]
    assert tokenizer.decode(supervised) == "Rain falls soft.<|im_end|>The moon looked at the cat.<|im_end|>"
    assert all(label in (IGNORE_INDEX, token) for token, label in zip(ids, labels))


def test_labels_truncate_keeping_the_start(tokenizer):
    full_ids, _ = conversation_labels(tokenizer, TEMPLATE, CONVERSATION, max_length=512)
    ids, labels = conversation_labels(tokenizer, TEMPLATE, CONVERSATION, max_length=6)
    assert ids == full_ids[:6]
    assert labels == [IGNORE_INDEX] * 6  # the user turn alone fills 6 tokens


# ----------------------------------------------------------------------------------- loss --
def test_heldout_loss_is_the_cross_entropy_of_assistant_tokens_only(model, tokenizer):
    loss = heldout_loss(model, tokenizer, TEMPLATE, [{"messages": CONVERSATION}], max_length=512, batch_size=4)
    ids, labels = conversation_labels(tokenizer, TEMPLATE, CONVERSATION, max_length=512)
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0]
    targets = torch.tensor(labels[1:])
    keep = targets != IGNORE_INDEX
    expected = torch.nn.functional.cross_entropy(logits[:-1][keep], targets[keep]).item()
    assert loss == pytest.approx(expected, rel=1e-5)
    assert 0 < loss < 2 * math.log(len(tokenizer))  # a random model is near uniform: about ln(V)


def test_heldout_loss_is_token_weighted_and_independent_of_padding(model, tokenizer):
    rows = [{"messages": CONVERSATION}, {"messages": OTHER}]
    single = [heldout_loss(model, tokenizer, TEMPLATE, [r], max_length=512, batch_size=1) for r in rows]
    counts = [sum(l != IGNORE_INDEX for l in conversation_labels(tokenizer, TEMPLATE, r["messages"], 512)[1][1:]) for r in rows]
    expected = (single[0] * counts[0] + single[1] * counts[1]) / sum(counts)
    batched = heldout_loss(model, tokenizer, TEMPLATE, rows, max_length=512, batch_size=2)  # right-padded batch
    assert batched == pytest.approx(expected, rel=1e-4)
    assert single[0] != pytest.approx(single[1], rel=1e-3)


def test_heldout_loss_refuses_rows_without_supervised_tokens(model, tokenizer):
    with pytest.raises(ValueError, match="max_length=6"):
        heldout_loss(model, tokenizer, TEMPLATE, [{"messages": CONVERSATION}], max_length=6, batch_size=2)


def test_fine_tuning_on_a_conversation_lowers_its_heldout_loss(tokenizer):
    rows = [{"messages": CONVERSATION}]
    model = build_model(tokenizer, seed=1)
    before = heldout_loss(model, tokenizer, TEMPLATE, rows, max_length=512, batch_size=1)
    fine_tune(model, tokenizer, CONVERSATION, steps=10)
    after = heldout_loss(model, tokenizer, TEMPLATE, rows, max_length=512, batch_size=1)
    assert after < before - 1.0


def test_perplexity_is_exp_of_the_mean_next_token_loss(model, tokenizer):
    text = GENERAL_TEXTS[0]
    ids = torch.tensor([tokenizer(text)["input_ids"]])
    with torch.no_grad():
        mean_loss = model(input_ids=ids, labels=ids).loss.item()  # transformers skips the first token too
    assert perplexity(model, tokenizer, [text], max_length=512, batch_size=1) == pytest.approx(math.exp(mean_loss), rel=1e-5)
    with pytest.raises(ValueError, match="no token after their first"):
        perplexity(model, tokenizer, ["a"], max_length=512, batch_size=1)


# ----------------------------------------------------------------------------- generation --
def test_generation_is_greedy_deterministic_and_bounded(model, tokenizer):
    prompts = ["What is the capital of France?", "Write about rain.", "hello"]
    first = generate_token_ids(model, tokenizer, TEMPLATE, prompts, max_new_tokens=7, batch_size=2)
    again = generate_token_ids(model, tokenizer, TEMPLATE, prompts, max_new_tokens=7, batch_size=3)
    assert first == again  # greedy, and left padding does not change the result
    assert all(len(row) <= 7 for row in first)
    texts = generate_responses(model, tokenizer, TEMPLATE, prompts, max_new_tokens=7)
    assert texts == [tokenizer.decode(row, skip_special_tokens=True).strip() for row in first]


def test_generation_stops_at_the_generation_config_eos(tokenizer):
    model = build_model(tokenizer)
    free = generate_token_ids(model, tokenizer, TEMPLATE, ["hello"], max_new_tokens=5)[0]
    assert len(free) == 5  # the random model never picks <|im_end|> here
    model.generation_config.eos_token_id = free[2]  # the third greedy token becomes a stop token
    stopped = generate_token_ids(model, tokenizer, TEMPLATE, ["hello"], max_new_tokens=5)[0]
    assert stopped == free[: free.index(free[2])]


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
    dtype, device = eval_precision()  # float32 on cpu here; test_evaluate_precision.py pins the choice
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


def test_models_and_tokenizer_load_as_safetensors_without_remote_code(folders, from_pretrained_calls):
    labels = [label for label, _model, _tokenizer in _base_then_tuned(folders / "tuned", folders / "base")]
    assert labels == ["base", "tuned"]
    assert [name for name, _ in from_pretrained_calls] == ["AutoTokenizer", "AutoModelForCausalLM", "AutoModelForCausalLM"]
    assert all(kwargs["trust_remote_code"] is False for _, kwargs in from_pretrained_calls)
    assert all(kwargs["use_safetensors"] is True for name, kwargs in from_pretrained_calls if name != "AutoTokenizer")


def test_a_hub_base_is_loaded_at_the_revision_it_was_trained_from(folders, from_pretrained_calls):
    revision = "0123456789abcdef0123456789abcdef01234567"
    for _label, _model, _tokenizer in _base_then_tuned(folders / "tuned", folders / "base", base_revision=revision):
        pass
    models = [kwargs for name, kwargs in from_pretrained_calls if name == "AutoModelForCausalLM"]
    assert [kwargs.get("revision") for kwargs in models] == [revision, None]  # base pinned; tuned is a folder


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


def test_load_prompts_names_file_and_line(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"text": "b"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"p\.jsonl:2: needs a non-empty string field"):
        load_prompts(path)
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b"}\n', encoding="utf-8")
    assert load_prompts(path) == ["a", "b"]
