import json

import pytest
import torch

from sftflow.tasks.lib.chat_template import CHATML_TEMPLATE
from sftflow.tasks.core.recipe_training import TinyModelConfig
from sftflow.tasks.core.weights import UnsafeWeightsError
from sftflow.tasks.lib.tiny_model import (
    SPECIAL_TOKENS,
    build_tiny_llama,
    conversation_texts,
    load_causal_lm,
    train_tokenizer,
)

ROWS = [
    {"messages": [
        {"role": "user", "content": "Name three primary colors."},
        {"role": "assistant", "content": "Red, yellow and blue are the primary colors."},
    ]},
    {"messages": [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "How do you say thank you?"},
        {"role": "assistant", "content": "Merci beaucoup, ça va très bien."},
    ]},
] * 10

CFG = TinyModelConfig(
    hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
    vocab_size=360, max_position_embeddings=128,
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    first = build_tiny_llama(conversation_texts(ROWS), CFG, seed=7, out_dir=root / "a")
    second = build_tiny_llama(conversation_texts(ROWS), CFG, seed=7, out_dir=root / "b")
    other_seed = build_tiny_llama(conversation_texts(ROWS), CFG, seed=8, out_dir=root / "c")
    return first, second, other_seed


def test_conversation_texts_yields_each_turn_content():
    texts = list(conversation_texts(ROWS[:2]))
    assert texts == [
        "Name three primary colors.", "Red, yellow and blue are the primary colors.",
        "Answer in French.", "How do you say thank you?", "Merci beaucoup, ça va très bien.",
    ]


def test_train_tokenizer_specials_template_and_round_trip():
    tok = train_tokenizer(conversation_texts(ROWS), vocab_size=360)
    assert [tok.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS] == [0, 1, 2, 3]
    assert (tok.eos_token, tok.pad_token, tok.bos_token, tok.unk_token) == ("<|im_end|>", "<|pad|>", None, None)
    assert tok.chat_template == CHATML_TEMPLATE
    assert 256 + len(SPECIAL_TOKENS) < len(tok) <= 360
    text = "Ωmega  spaced\n\ttext 😀 <|im_start|>"  # unseen bytes still encode (byte-level alphabet)
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    assert ids[-1] == tok.convert_tokens_to_ids("<|im_start|>")  # specials are single tokens


def test_train_tokenizer_is_deterministic():
    one = train_tokenizer(conversation_texts(ROWS), vocab_size=360)
    two = train_tokenizer(conversation_texts(ROWS), vocab_size=360)
    assert one.get_vocab() == two.get_vocab()
    assert one.backend_tokenizer.to_str() == two.backend_tokenizer.to_str()


def test_train_tokenizer_refuses_a_vocab_below_the_byte_alphabet():
    with pytest.raises(ValueError, match="below 260"):
        train_tokenizer(["abc"], vocab_size=200)


def test_tiny_llama_folder_reloads_and_generates(built):
    folder = built[0]
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
            "tokenizer_config.json"} <= names
    model, tok = load_causal_lm(folder)
    assert type(model).__name__ == "LlamaForCausalLM"
    assert tok.chat_template == CHATML_TEMPLATE
    eos_id, pad_id = tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|pad|>")
    config = model.config
    assert (config.vocab_size, config.hidden_size, config.num_hidden_layers) == (len(tok), 32, 2)
    assert (config.num_attention_heads, config.num_key_value_heads, config.intermediate_size) == (4, 4, 64)
    assert config.tie_word_embeddings and config.max_position_embeddings == 128
    assert (config.eos_token_id, config.pad_token_id, config.bos_token_id) == (eos_id, pad_id, None)
    assert (model.generation_config.eos_token_id, model.generation_config.pad_token_id) == (eos_id, pad_id)
    assert model.get_input_embeddings().weight.data_ptr() == model.get_output_embeddings().weight.data_ptr()

    prompt = tok.apply_chat_template(
        [{"role": "user", "content": "Name three primary colors."}],
        add_generation_prompt=True, return_dict=True, return_tensors="pt",
    )
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, prompt["input_ids"].shape[1] + 4)
    assert torch.equal(out[0, : prompt["input_ids"].shape[1]], prompt["input_ids"][0])


def test_tiny_llama_is_deterministic_per_seed(built):
    first, second, other_seed = built
    for name in ("model.safetensors", "tokenizer.json", "config.json", "generation_config.json"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert (first / "model.safetensors").read_bytes() != (other_seed / "model.safetensors").read_bytes()
    assert (first / "tokenizer.json").read_bytes() == (other_seed / "tokenizer.json").read_bytes()
    assert json.loads((first / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]


def test_build_refuses_heads_that_do_not_divide_width(tmp_path):
    bad = CFG.model_copy(update={"num_attention_heads": 5})
    with pytest.raises(ValueError, match="not divisible by train.tiny.num_attention_heads=5"):
        build_tiny_llama(["abc"], bad, seed=0, out_dir=tmp_path / "x")


def test_load_causal_lm_options(built):
    model, _ = load_causal_lm(built[0], dtype=torch.bfloat16, attn_implementation="eager")
    assert next(model.parameters()).dtype == torch.bfloat16
    assert model.config._attn_implementation == "eager"


def test_load_causal_lm_refuses_unpinned_remote_code_and_builtin_names(built):
    with pytest.raises(ValueError, match="pin it with train.revision"):
        load_causal_lm(built[0], trust_remote_code=True)
    with pytest.raises(ValueError, match="40-character commit hash, not a branch"):
        load_causal_lm(built[0], revision="main", trust_remote_code=True)
    with pytest.raises(ValueError, match="build it with build_tiny_llama"):
        load_causal_lm("builtin:tiny-llama")


def test_load_causal_lm_asks_for_safetensors_and_no_remote_code(built, from_pretrained_calls):
    load_causal_lm(built[0])
    kinds = {name: kwargs for name, kwargs in from_pretrained_calls}
    assert set(kinds) == {"AutoTokenizer", "AutoModelForCausalLM"}
    assert kinds["AutoModelForCausalLM"]["use_safetensors"] is True
    assert all(kwargs["trust_remote_code"] is False for kwargs in kinds.values())


def test_load_causal_lm_refuses_a_folder_with_only_pytorch_model_bin(built, tmp_path, pickled_copy,
                                                                     from_pretrained_calls):
    from transformers import AutoModelForCausalLM

    folder = pickled_copy(built[0], tmp_path / "pickled")
    assert AutoModelForCausalLM.from_pretrained(folder) is not None  # a whole model, if unpickled
    from_pretrained_calls.clear()
    with pytest.raises(UnsafeWeightsError) as caught:
        load_causal_lm(folder)
    message = str(caught.value)
    assert str(folder) in message and "pytorch_model.bin" in message
    assert "safetensors only" in message and "Convert the folder" in message
    assert from_pretrained_calls == []  # refused before anything was read
