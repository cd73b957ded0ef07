"""The reward-model scorer, on tiny local folders (a BERT head with one label, a Llama head with
three labels; tests/tasks/conftest.py `models_root`): batching, chat templates, safe loading, and
how a pair longer than max_length_tokens is cut so that the response is what is judged."""

from __future__ import annotations

import json
import random

import pytest
import torch

from sftflow.tasks.core.recipe_data import ScoreConfig
from sftflow.tasks.core.weights import UnsafeWeightsError
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.reward_model import RewardModelScorer, fit_reward_text, length_sorted_batches, reward_model_text
from sftflow.tasks.lib.scorers import load_quality_scorer, scorer_name

PAIRS = [
    ("why is the sky blue?", "light from the sun"),
    ("explain photosynthesis", "plants use sunlight and water to make sugar in the leaves"),
    ("what", "the football team won the match"),
    ("how to sort a list in python?", "sort"),
    ("why", "the sun is a sun"),
]


def test_length_sorted_batches_longest_first_ties_by_index():
    assert length_sorted_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]
    assert length_sorted_batches([], 4) == []
    assert length_sorted_batches([2, 2, 2], 8) == [[0, 1, 2]]


# ----------------------------------------------------------------------------- reward models --
def test_bert_reward_scores_do_not_depend_on_batch_size_or_order(models_root):
    folder = str(models_root / "models" / "bert")
    by_batch = {size: RewardModelScorer(folder, batch_size=size, max_length_tokens=32, device="cpu").score(PAIRS)
                for size in (1, 2, 8)}
    reference = by_batch[1]
    assert len(reference) == len(PAIRS)
    assert len({round(s, 4) for s in reference}) == len(PAIRS)  # distinct: order mistakes would show
    assert by_batch[2] == pytest.approx(reference, abs=1e-5)
    assert by_batch[8] == pytest.approx(reference, abs=1e-5)
    scorer = RewardModelScorer(folder, batch_size=2, max_length_tokens=32, device="cpu")
    assert scorer.score(PAIRS[::-1]) == pytest.approx(reference[::-1], abs=1e-5)
    assert scorer.score(PAIRS) == scorer.score(PAIRS)  # deterministic
    assert scorer.score([]) == []


def test_bert_reward_reads_plain_user_assistant_text_with_special_tokens(models_root):
    scorer = RewardModelScorer(str(models_root / "models" / "bert"), batch_size=4, max_length_tokens=32, device="cpu")
    text, from_template = reward_model_text(scorer.tokenizer, "why is the sky blue?", "light")
    assert (text, from_template) == ("User: why is the sky blue?\n\nAssistant: light", False)
    encoded = scorer.tokenizer(text, return_tensors="pt")  # [CLS] ... [SEP]
    with torch.inference_mode():
        expected = scorer.model(**encoded).logits[0, 0].item()
    assert scorer.score([("why is the sky blue?", "light")]) == pytest.approx([expected], abs=1e-6)
    assert scorer.name == f"reward-model:{models_root / 'models' / 'bert'}"


def test_reward_inputs_are_truncated_to_max_length_tokens(models_root):
    # 200 words would overflow the 64 position embeddings without truncation.
    scorer = RewardModelScorer(str(models_root / "models" / "bert"), batch_size=2, max_length_tokens=16, device="cpu")
    long_answer = " ".join(["sunlight water"] * 100)
    short_answer = " ".join(["sunlight water"] * 8)
    long_score, short_score = scorer.score([("explain", long_answer), ("explain", short_answer)])
    # Both are cut to the same first 16 tokens ([CLS] ... [SEP]), so they read the same text.
    assert long_score == pytest.approx(short_score, abs=1e-5)


def test_llama_reward_uses_chat_template_eos_padding_and_last_label(models_root):
    scorer = RewardModelScorer(str(models_root / "models" / "llama"), batch_size=2, max_length_tokens=32, device="cpu")
    assert scorer.tokenizer.pad_token == "</s>"
    assert scorer.model.config.pad_token_id == scorer.tokenizer.eos_token_id
    text, from_template = reward_model_text(scorer.tokenizer, "why is the sky blue?", "light")
    assert (text, from_template) == ("<|user|> why is the sky blue? </s> <|assistant|> light </s> ", True)

    encoded = scorer.tokenizer(text, return_tensors="pt", add_special_tokens=False)  # the template has them
    with torch.inference_mode():
        logits = scorer.model(input_ids=encoded["input_ids"], attention_mask=encoded["attention_mask"]).logits
    assert logits.shape == (1, 3)
    # Scored inside a padded batch (eos as pad), the pair still gets the last of its three logits.
    scores = scorer.score([PAIRS[1], ("why is the sky blue?", "light"), PAIRS[2]])
    assert scores[1] == pytest.approx(logits[0, 2].item(), abs=1e-5)
    single = RewardModelScorer(str(models_root / "models" / "llama"), batch_size=1, max_length_tokens=32, device="cpu")
    batched = scorer.score(PAIRS)
    assert single.score(PAIRS) == pytest.approx(batched, abs=1e-5)
    assert len({round(s, 4) for s in batched}) == len(PAIRS)


def test_reward_model_loads_safetensors_without_remote_code(models_root, from_pretrained_calls):
    RewardModelScorer(str(models_root / "models" / "bert"), device="cpu")
    kinds = {name: kwargs for name, kwargs in from_pretrained_calls}
    assert set(kinds) == {"AutoTokenizer", "AutoModelForSequenceClassification"}
    assert kinds["AutoModelForSequenceClassification"]["use_safetensors"] is True
    assert all(kwargs["trust_remote_code"] is False for kwargs in kinds.values())


def test_reward_model_folder_with_only_pytorch_model_bin_is_refused(models_root, pickled_copy, from_pretrained_calls):
    from transformers import AutoModelForSequenceClassification

    folder = pickled_copy(models_root / "models" / "bert", models_root / "models" / "bert-pickled")
    assert AutoModelForSequenceClassification.from_pretrained(folder) is not None  # loadable, if unpickled
    from_pretrained_calls.clear()
    ws = Workspace(root=models_root, warehouse=models_root / "warehouse")
    cfg = ScoreConfig(backend="reward-model", model="models/bert-pickled")
    with pytest.raises(UnsafeWeightsError) as caught:
        load_quality_scorer(cfg, ws.resolve_input)
    message = str(caught.value)
    assert message.startswith("score.model 'models/bert-pickled': ")
    assert str(folder) in message and "pytorch_model.bin" in message
    assert "safetensors only" in message and "Convert the folder" in message
    assert from_pretrained_calls == []


def test_load_quality_scorer_resolves_a_local_folder_under_the_project(models_root):
    ws = Workspace(root=models_root, warehouse=models_root / "warehouse")
    cfg = ScoreConfig(backend="reward-model", model="models/bert", batch_size=3, max_length_tokens=32)
    scorer = load_quality_scorer(cfg, ws.resolve_input)
    assert isinstance(scorer, RewardModelScorer)
    assert scorer.name == "reward-model:models/bert"  # the recipe's spelling, not a machine path
    assert scorer_name(cfg) == scorer.name  # what a score run that loads nothing records
    assert (scorer.batch_size, scorer.max_length_tokens) == (3, 32)
    assert len(scorer.score(PAIRS[:2])) == 2


# ------------------------------------------------------- truncation: the response is what is judged --
# Issue 13, item 5: prompt+response used to be cut from the right, so a long prompt left nothing
# of the response being judged. Now the prompt loses its start and the response stays whole.
PROMPT_WORDS = "the a of and in to is are why how what explain".split()
ANSWER_WORDS = "sky blue light sun sunlight plants water energy leaves sugar football match team won goal".split()


def long_prompt_corpus(n_pairs: int = 60, seed: int = 13) -> list[tuple[str, str]]:
    """Seeded pairs of the failing shape: prompts of 0-150 words (most far past a 32-token
    budget, as a long system prompt or pasted document is), answers of 1-12 words."""
    rng = random.Random(seed)
    return [(" ".join(rng.choices(PROMPT_WORDS, k=rng.randint(0, 150))),
             " ".join(rng.choices(ANSWER_WORDS, k=rng.randint(1, 12)))) for _ in range(n_pairs)]


@pytest.fixture(scope="module")
def last_word_judge(tmp_path_factory) -> str:
    """A reward model whose score is a function of the last token it reads, and nothing else: a
    Llama classification head with no decoder layers pools the last token's own embedding. With no
    chat template it reads "User: <prompt>\\n\\nAssistant: <response>", so its score is the
    response's last word exactly when the response reaches it."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForSequenceClassification, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("judge") / "last-word"
    vocab = {w: i for i, w in enumerate(["<unk>", "<s>", "</s>", *PROMPT_WORDS, *ANSWER_WORDS])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    torch.manual_seed(5)
    model = LlamaForSequenceClassification(LlamaConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=0, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=64, num_labels=1, initializer_range=0.5,
    ))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def fed_sequences(scorer: RewardModelScorer, pairs: list[tuple[str, str]]) -> tuple[list[float], list[list[str]]]:
    """Scores, and the token sequences the model was actually given (padding removed)."""
    seen: list[list[str]] = []

    def capture(_module, _args, kwargs):
        for ids, mask in zip(kwargs["input_ids"].tolist(), kwargs["attention_mask"].tolist()):
            seen.append(scorer.tokenizer.convert_ids_to_tokens([i for i, m in zip(ids, mask) if m]))

    handle = scorer.model.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        scores = scorer.score(pairs)
    finally:
        handle.remove()
    return scores, seen


def test_a_long_prompt_does_not_change_which_response_scores_higher(last_word_judge):
    scorer = RewardModelScorer(last_word_judge, batch_size=8, max_length_tokens=32, device="cpu")
    answers = ["the sky is blue", "plants make sugar", "the team won", "sunlight and water", "goal"]
    short = scorer.score([("why", a) for a in answers])
    assert len({round(s, 4) for s in short}) == len(answers)  # the judge tells these answers apart
    for n_words in (40, 200):  # a prompt past the 32-token budget, and one past the 64 positions
        prompt = " ".join(random.Random(n_words).choices(PROMPT_WORDS, k=n_words))
        long = scorer.score([(prompt, a) for a in answers])
        # Before the fix every answer scored the same (the model read only prompt words).
        assert long == pytest.approx(short, abs=1e-5)


def test_the_template_and_the_whole_response_reach_the_model_on_a_long_prompt_corpus(models_root):
    scorer = RewardModelScorer(str(models_root / "models" / "llama"), batch_size=8, max_length_tokens=32, device="cpu")
    corpus = long_prompt_corpus()
    scores, seen = fed_sequences(scorer, corpus)
    assert len(scores) == len(corpus)
    expected, truncated = [], 0
    for prompt, response in corpus:
        p, r = prompt.split(), response.split()
        kept = p[len(p) - min(len(p), 32 - 4 - len(r)):]  # 4 template tokens: <|user|> </s> <|assistant|> </s>
        truncated += len(kept) < len(p)
        expected.append(["<|user|>", *kept, "</s>", "<|assistant|>", *r, "</s>"])
    assert truncated >= len(corpus) // 2  # the corpus really is of the failing shape
    assert sorted(seen) == sorted(expected)  # the end of each prompt, each whole response, the template
    assert max(len(s) for s in seen) <= 32


def test_truncation_is_reported_per_pair(models_root):
    from sftflow.tasks.lib.scorers import Truncation

    scorer = RewardModelScorer(str(models_root / "models" / "llama"), batch_size=4, max_length_tokens=32, device="cpu")
    long_prompt = " ".join(["why"] * 50)
    long_answer = " ".join(["light"] * 40)
    pairs = [("why is the sky blue", "light"), (long_prompt, "the sun"), ("why is the sky blue", long_answer)]
    scored = scorer.score_truncated(pairs)
    assert scored.scores == pytest.approx(scorer.score(pairs), abs=1e-6)
    assert scored.truncations == [
        Truncation(0, 0),
        Truncation(50 - (32 - 4 - 2), 0),  # the prompt gives way first
        Truncation(5, 40 - (32 - 4)),  # a response that alone does not fit: its start, no prompt
    ]
    _, seen = fed_sequences(scorer, pairs[2:])
    assert seen == [["<|user|>", "</s>", "<|assistant|>", *["light"] * 28, "</s>"]]


def test_plain_layout_keeps_special_tokens_and_the_response_end(models_root):
    # BERT reads "User: ...\n\nAssistant: ..." between [CLS] and [SEP]; a right cut lost [SEP] too.
    scorer = RewardModelScorer(str(models_root / "models" / "bert"), batch_size=8, max_length_tokens=32, device="cpu")
    corpus = long_prompt_corpus(30, seed=7)
    scored = scorer.score_truncated(corpus)
    _, seen = fed_sequences(scorer, corpus)
    for (prompt, response), truncation in zip(corpus, scored.truncations):
        p, r = prompt.split(), response.split()
        kept = p[len(p) - min(len(p), 32 - 6 - len(r)):]  # [CLS] user : ... assistant : ... [SEP]
        assert ["[CLS]", "user", ":", *kept, "assistant", ":", *r, "[SEP]"] in seen
        assert truncation.prompt_tokens_dropped == len(p) - len(kept) and truncation.response_tokens_dropped == 0


def test_slow_tokenizers_cut_where_fast_ones_do(models_root):
    from transformers import BertTokenizer, BertTokenizerFast

    folder = models_root / "models" / "bert"
    slow, fast = BertTokenizer.from_pretrained(folder), BertTokenizerFast.from_pretrained(folder)
    corpus = long_prompt_corpus(20, seed=3) + [("why is the sky blue", " ".join(["sun light"] * 30))]
    for prompt, response in corpus:
        assert fit_reward_text(slow, prompt, response, 24) == fit_reward_text(fast, prompt, response, 24)


def test_score_stage_keeps_the_same_rows_under_long_system_prompts(last_word_judge):
    # Rows that share one long system prompt, as tool-use and persona datasets do: the stage must
    # rank them by their answers, exactly as it ranks the same rows without the system prompt.
    from tests.stage_helpers import records_from_rows
    from tests.stage_helpers import score_records

    rng = random.Random(21)
    system = " ".join(rng.choices(PROMPT_WORDS, k=120))
    answers = [" ".join(rng.choices(ANSWER_WORDS, k=rng.randint(1, 8))) for _ in range(40)]

    def rows(with_system: bool) -> list[dict]:
        return [{"example_id": f"r{i:02d}", "content_hash": f"h{i}", "source": "s", "source_format": "openai",
                 "source_uri": "s.jsonl", "source_row": i, "category": "qa",
                 "messages": ([{"role": "system", "content": system}] if with_system else [])
                 + [{"role": "user", "content": "why"}, {"role": "assistant", "content": answer}]}
                for i, answer in enumerate(answers)]

    scorer = RewardModelScorer(last_word_judge, batch_size=8, max_length_tokens=32, device="cpu")
    cfg = ScoreConfig(backend="reward-model", model="judge", keep_top_fraction=0.5, max_length_tokens=32)
    plain = score_records(records_from_rows(rows(False)), cfg, scorer)
    shared = score_records(records_from_rows(rows(True)), cfg, scorer)
    kept = lambda out: sorted(out.records.column("example_id").to_pylist())  # noqa: E731
    assert kept(shared) == kept(plain) and len(kept(plain)) == 20
    assert shared.stats["n_prompt_truncated"] == 40 and shared.stats["n_response_truncated"] == 0
    assert plain.stats["n_prompt_truncated"] == 0
    details = [json.loads(d["detail"]) for d in shared.decisions.to_pylist()]
    assert all(d["prompt_tokens_dropped"] > 0 and d["response_tokens_dropped"] == 0 for d in details)

