import copy

import jinja2
import pytest

from sftflow.tasks.lib.chat_template import (
    CHATML_TEMPLATE,
    ChatTemplateError,
    end_of_turn_token,
    has_generation_markers,
    select_chat_template,
)
from sftflow.tasks.core.workspace import PathNotAllowed, Workspace
from sftflow.tasks.lib.tiny_model import train_tokenizer

TEXTS = [
    "Be brief.", "What is the capital of France?", "Paris is the capital.",
    "Look up the weather.", '{"temp_c": 21}', "It is 21 degrees.", "Thanks!",
] * 5

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital."},
    {"role": "user", "content": "Look up the weather."},
    {"role": "tool", "content": '{"temp_c": 21}'},
    {"role": "assistant", "content": " It is 21 degrees."},  # leading space: offsets must still map
]

# ChatML as many hub tokenizers ship it: same text, no generation markers.
PLAIN_CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] "
    "+ '<|im_end|>\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXTS, vocab_size=320)


def masked_runs(tokenizer, ids, mask):
    """Decoded text of each maximal run of masked tokens."""
    runs, current = [], []
    for token_id, bit in zip(ids, mask):
        if bit:
            current.append(token_id)
        elif current:
            runs.append(tokenizer.decode(current)), current.clear()
    if current:
        runs.append(tokenizer.decode(current))
    return runs


def test_chatml_renders_every_role_without_a_default_system_prompt(tokenizer):
    rendered = tokenizer.apply_chat_template(CONVERSATION[1:3], tokenize=False, chat_template=CHATML_TEMPLATE)
    assert rendered == (
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis is the capital.<|im_end|>\n"
    )
    full = tokenizer.apply_chat_template(CONVERSATION, tokenize=False, chat_template=CHATML_TEMPLATE)
    assert full == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n"
        "<|im_start|>assistant\nParis is the capital.<|im_end|>\n"
        "<|im_start|>user\nLook up the weather.<|im_end|>\n"
        '<|im_start|>tool\n{"temp_c": 21}<|im_end|>\n'
        "<|im_start|>assistant\n It is 21 degrees.<|im_end|>\n"
    )


def test_chatml_mask_covers_exactly_assistant_content_and_end_of_turn(tokenizer):
    out = tokenizer.apply_chat_template(
        CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True,
        chat_template=CHATML_TEMPLATE,
    )
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(mask) == len(ids)
    assert masked_runs(tokenizer, ids, mask) == ["Paris is the capital.<|im_end|>", " It is 21 degrees.<|im_end|>"]
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # 6 turns end with <|im_end|>; only the 2 assistant ones are supervised, and the newline after is not.
    assert [bit for token_id, bit in zip(ids, mask) if token_id == im_end] == [0, 0, 1, 0, 0, 1]
    assert mask[-1] == 0 and tokenizer.decode(ids[-1:]) == "\n"


def test_add_generation_prompt_opens_an_assistant_turn(tokenizer):
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi"}], tokenize=False, add_generation_prompt=True,
        chat_template=CHATML_TEMPLATE,
    )
    assert prompt == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"


def test_unknown_role_is_an_error(tokenizer):
    with pytest.raises(jinja2.TemplateError, match="unknown role narrator"):
        tokenizer.apply_chat_template(
            [{"role": "narrator", "content": "x"}], tokenize=False, chat_template=CHATML_TEMPLATE
        )


def test_has_generation_markers_variants():
    assert has_generation_markers(CHATML_TEMPLATE)
    assert has_generation_markers("{% generation %}x{% endgeneration %}")
    assert has_generation_markers("{%- generation -%}x{%- endgeneration -%}")
    assert has_generation_markers({"default": "{% generation %}x{% endgeneration %}", "tool_use": ""})
    assert not has_generation_markers(PLAIN_CHATML)
    assert not has_generation_markers(None)
    assert not has_generation_markers("")


def test_select_uses_tokenizer_template_with_markers_without_a_recipe_template(tokenizer, tmp_path):
    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    assert select_chat_template(tokenizer, None, ws.resolve_input) == (CHATML_TEMPLATE, "tokenizer")
    assert select_chat_template(tokenizer, "  ", ws.resolve_input) == (CHATML_TEMPLATE, "tokenizer")
    # naming the very template the tokenizer has replaces nothing: no override note
    assert select_chat_template(tokenizer, "chatml", ws.resolve_input) == (CHATML_TEMPLATE, "builtin:chatml")


def test_an_explicit_recipe_template_overrides_the_tokenizers_marked_template(tokenizer, tmp_path):
    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    own = copy.deepcopy(tokenizer)
    own.chat_template = CHATML_TEMPLATE.replace("<|im_start|>assistant\\n", "<|im_start|>assistant:\\n")
    assert own.chat_template != CHATML_TEMPLATE and has_generation_markers(own.chat_template)
    assert select_chat_template(own, None, ws.resolve_input) == (own.chat_template, "tokenizer")
    assert select_chat_template(own, "chatml", ws.resolve_input) == (
        CHATML_TEMPLATE, "builtin:chatml (overrides the tokenizer's own template)")
    (tmp_path / "mine.jinja").write_text(CHATML_TEMPLATE.replace("<|im_start|>", "<|im_start|> "), encoding="utf-8")
    text, origin = select_chat_template(own, "mine.jinja", ws.resolve_input)
    assert text == (tmp_path / "mine.jinja").read_text(encoding="utf-8")
    assert origin == "file:mine.jinja (overrides the tokenizer's own template)"


def test_select_refuses_a_tokenizer_without_markers_and_no_recipe_template(tokenizer, tmp_path):
    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = PLAIN_CHATML
    with pytest.raises(ChatTemplateError, match=r"without \{% generation %\} markers.*set train.chat_template: chatml"):
        select_chat_template(plain, None, ws.resolve_input)
    plain.chat_template = None
    with pytest.raises(ChatTemplateError, match="has no chat template"):
        select_chat_template(plain, None, ws.resolve_input)


def test_select_builtin_chatml_and_jinja_file(tokenizer, tmp_path):
    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = PLAIN_CHATML
    assert select_chat_template(plain, "chatml", ws.resolve_input) == (
        CHATML_TEMPLATE, "builtin:chatml (overrides the tokenizer's own template)")
    plain.chat_template = None
    assert select_chat_template(plain, "chatml", ws.resolve_input) == (CHATML_TEMPLATE, "builtin:chatml")

    (tmp_path / "templates").mkdir()
    marked = tmp_path / "templates" / "mine.jinja"
    marked.write_text(CHATML_TEMPLATE.replace("<|im_start|>", "<|im_start|> "), encoding="utf-8")
    text, origin = select_chat_template(plain, "templates/mine.jinja", ws.resolve_input)
    assert origin == "file:mine.jinja"  # the tokenizer has no template of its own here
    assert text == marked.read_text(encoding="utf-8")


def test_select_rejects_bad_template_files(tokenizer, tmp_path):
    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    plain = copy.deepcopy(tokenizer)
    plain.chat_template = PLAIN_CHATML
    (tmp_path / "plain.jinja").write_text(PLAIN_CHATML, encoding="utf-8")
    (tmp_path / "marked.txt").write_text(CHATML_TEMPLATE, encoding="utf-8")
    with pytest.raises(ChatTemplateError, match=r"no \{% generation %\} markers"):
        select_chat_template(plain, "plain.jinja", ws.resolve_input)
    with pytest.raises(ChatTemplateError, match="neither 'chatml' nor a .jinja file"):
        select_chat_template(plain, "marked.txt", ws.resolve_input)
    with pytest.raises(ChatTemplateError, match="no file at"):
        select_chat_template(plain, "missing.jinja", ws.resolve_input)
    with pytest.raises(PathNotAllowed):
        select_chat_template(plain, "/etc/evil.jinja", ws.resolve_input)


def test_end_of_turn_token(tokenizer):
    assert end_of_turn_token(CHATML_TEMPLATE, tokenizer) == "<|im_end|>"

    llama3 = copy.deepcopy(tokenizer)
    llama3.add_tokens(["<|eot_id|>"], special_tokens=True)
    template = "{% for m in messages %}{{ m['content'] }}<|eot_id|>{% endfor %}"
    assert end_of_turn_token(template, llama3) == "<|eot_id|>"
    # the literal alone is not enough: the token must exist in the vocabulary
    with pytest.raises(ChatTemplateError, match="cannot tell which token ends an assistant turn"):
        end_of_turn_token(template, tokenizer)

    assert end_of_turn_token("{% for m in messages %}{{ m['content'] + eos_token }}{% endfor %}", tokenizer) == "<|im_end|>"


def test_chatml_is_refused_for_a_vocabulary_without_its_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE(unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.ByteLevel()
    raw.train_from_iterator(TEXTS, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "</s>"]))
    other = PreTrainedTokenizerFast(tokenizer_object=raw, eos_token="</s>", unk_token="[UNK]")
    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    with pytest.raises(ChatTemplateError, match=r"<\|im_start\|> and <\|im_end\|>.*\.jinja"):
        select_chat_template(other, "chatml", ws.resolve_input)
