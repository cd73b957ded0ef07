"""The filter stage on literal rows: exact decisions, columns and evidence."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from sftflow.tasks.core.artifacts import ArtifactStore
from sftflow.tasks.core.records import RECORD_SCHEMA
from tests.stage_helpers import read_records, records_from_rows
from sftflow.tasks.core.recipe_filters import EvalSetConfig, FilterConfig
from sftflow.tasks.core.stage import execute, plan_stage
from sftflow.tasks.core.workspace import Workspace
from sftflow.tasks.lib.decontaminate import load_eval_index
from sftflow.tasks.filters import LIBRARIES, filter_input_hashes, filter_records, filter_stage

SYSTEM = "You are a helpful assistant."  # 6 MiniLM tokens
INSULT = "You are a fucking idiot and a piece of shit."  # 11 tokens, profanity-check ~1.0
SAFE_REPLY = "I am sorry you feel that way. I am here to help whenever you want to talk about anything."  # 21
LEAKED = (  # 16 words: shares 13-grams with the eval file below
    "the quick brown fox named bartholomew jumps over the lazy dog sleeping near the river bank"
)


def conv(example_id: str, *turns: tuple[str, str]) -> dict:
    return {"example_id": example_id, "source": "t", "source_format": "openai", "category": "qa",
            "messages": [{"role": role, "content": content} for role, content in turns]}


ROWS = [
    conv("short", ("user", "What is the capital of France?"), ("assistant", "Four.")),
    conv("long", ("user", "Tell me about the water cycle."),
         ("assistant", " ".join(["Water evaporates from the oceans, rises into the sky where it cools "
                                 "and condenses into clouds, and then falls back to the ground as rain "
                                 "or snow."] * 3))),
    conv("toxic_answer", ("user", "What do you think of my essay?"),
         ("assistant", "You are a fucking idiot and your essay is a piece of shit.")),
    conv("toxic_prompt", ("user", INSULT), ("assistant", SAFE_REPLY)),
    conv("contaminated", ("user", "Tell me a story."),
         ("assistant", f"Once upon a time {LEAKED} and everyone laughed.")),
    conv("clean", ("system", SYSTEM), ("user", "What is the capital of France?"),
         ("assistant", "The capital of France is Paris, a city on the Seine known for its museums.")),
]



@pytest.fixture()
def eval_file(tmp_path):
    path = tmp_path / "heldout.jsonl"
    path.write_text(json.dumps({"text": f"Question: {LEAKED.upper()}?"}) + "\n", encoding="utf-8")
    return path


def make_cfg(eval_path, **toxicity) -> FilterConfig:
    return FilterConfig.model_validate({
        "length": {"min_response_tokens": 10, "max_total_tokens": 80},
        "toxicity": {"backend": "profanity-check", "threshold": 0.5, **toxicity},
        "decontaminate": {"eval_sets": [{"name": "heldout", "path": str(eval_path)}], "ngram": 13},
    })


def run(rows, cfg, counter, scorer, eval_path):
    eval_index = load_eval_index(cfg.decontaminate, lambda p: eval_path)
    return filter_records(records_from_rows(rows), cfg, counter, scorer, eval_index)


def reasons(output) -> dict[str, str]:
    return {d["example_id"]: d["reason"] for d in output.decisions.to_pylist()}


def details(output) -> dict[str, dict]:
    return {d["example_id"]: json.loads(d["detail"]) for d in output.decisions.to_pylist()}


def test_each_check_decides_its_row(counter, profanity, eval_file):
    out = run(ROWS, make_cfg(eval_file), counter, profanity, eval_file)
    assert reasons(out) == {
        "short": "too_short_response", "long": "too_long", "toxic_answer": "toxic",
        "toxic_prompt": "kept", "contaminated": "contaminated", "clean": "kept",
    }
    assert out.decisions.num_rows == len(ROWS)
    assert out.records.column("example_id").to_pylist() == ["toxic_prompt", "clean"]
    assert out.stats["n_in"] == 6 and out.stats["n_out"] == 2
    assert out.stats["reasons"] == {"contaminated": 1, "kept": 2, "too_long": 1, "too_short_response": 1, "toxic": 1}
    assert out.stats["tokenizer"].startswith("builtin:minilm@")
    assert out.stats["toxicity_scorer"].startswith("profanity-check@")
    assert out.stats["rows_with_hits_by_set"] == {"heldout": 1}


def test_token_counts_with_minilm(counter, profanity, eval_file):
    out = run(ROWS, make_cfg(eval_file), counter, profanity, eval_file)
    clean = out.records.filter(pc.equal(out.records["example_id"], "clean")).to_pylist()[0]
    # system 6 + user 7 prompt tokens; the answer is 17 WordPiece tokens (no [CLS]/[SEP]).
    assert (clean["n_tokens_prompt"], clean["n_tokens_response"], clean["n_tokens_total"]) == (13, 17, 30)
    assert details(out)["short"]["n_tokens_response"] == 2  # "Four." = four + .
    assert details(out)["long"]["n_tokens_total"] == 7 + 3 * 35
    for name in ("n_tokens_prompt", "n_tokens_response", "n_tokens_total", "decon_hits"):
        assert out.records.schema.field(name).type == pa.int64()


def test_toxic_prompt_with_safe_answer_is_kept_but_recorded(counter, profanity, eval_file):
    out = run(ROWS, make_cfg(eval_file), counter, profanity, eval_file)
    row = out.records.filter(pc.equal(out.records["example_id"], "toxic_prompt")).to_pylist()[0]
    assert row["toxicity_user"] > 0.99
    assert row["toxicity_assistant"] < 0.05
    decision = {d["example_id"]: d for d in out.decisions.to_pylist()}["toxic_prompt"]
    assert decision["score"] == pytest.approx(row["toxicity_assistant"])  # only the judged role
    toxic = {d["example_id"]: d for d in out.decisions.to_pylist()}["toxic_answer"]
    assert toxic["score"] > 0.99 and not toxic["kept"]


def test_judging_user_turns_drops_the_toxic_prompt(counter, profanity, eval_file):
    out = run(ROWS, make_cfg(eval_file, roles=["user", "assistant"]), counter, profanity, eval_file)
    assert reasons(out)["toxic_prompt"] == "toxic"
    assert out.records.column("example_id").to_pylist() == ["clean"]
    decision = {d["example_id"]: d for d in out.decisions.to_pylist()}["toxic_prompt"]
    assert decision["score"] > 0.99  # max over user and assistant


def test_contaminated_row_records_hits(counter, profanity, eval_file):
    out = run(ROWS, make_cfg(eval_file), counter, profanity, eval_file)
    # 16 shared words hold 16 - 13 + 1 = 4 shared 13-grams
    assert details(out)["contaminated"]["decon_hits_by_set"] == {"heldout": 4}
    assert details(out)["clean"]["decon_hits_by_set"] == {"heldout": 0}
    assert out.records.column("decon_hits").to_pylist() == [0, 0]
    # the decision names the eval set and the item's place (the recipe path, here absolute)
    assert details(out)["contaminated"]["decon_matches"] == [
        {"eval_set": "heldout", "item": f"{eval_file}:1", "by": "ngram"}]
    assert details(out)["clean"]["decon_matches"] == []
    assert out.stats["eval_sets"]["heldout"]["items"] == 1 and out.stats["eval_sets"]["heldout"]["ngrams"] == 17 - 13 + 1


def test_short_eval_item_copied_into_a_row_is_contaminated(counter, profanity, tmp_path):
    # 7 words: no 13-gram, so before this was never caught
    path = tmp_path / "short.jsonl"
    path.write_text(json.dumps({"text": "Which gas do plants absorb from air?"}) + "\n", encoding="utf-8")
    rows = [conv("copied", ("user", "Quiz time. Which gas do plants absorb from air? Thanks."), ("assistant", SAFE_REPLY)),
            conv("other", ("user", "Which gas do plants release into the air?"), ("assistant", SAFE_REPLY))]
    out = run(rows, make_cfg(path), counter, profanity, path)
    assert reasons(out) == {"copied": "contaminated", "other": "kept"}
    assert details(out)["copied"]["decon_matches"] == [{"eval_set": "heldout", "item": f"{path}:1", "by": "whole_item"}]


def test_detail_holds_all_numbers(counter, profanity, eval_file):
    detail = details(run(ROWS, make_cfg(eval_file), counter, profanity, eval_file))["clean"]
    assert set(detail) == {"n_tokens_prompt", "n_tokens_response", "n_tokens_total", "toxicity_user",
                           "toxicity_assistant", "toxicity_top_window", "toxicity_unjudged",
                           "decon_hits_by_set", "decon_matches"}
    assert detail["n_tokens_total"] == 30 and 0 <= detail["toxicity_assistant"] < 0.5
    assert detail["toxicity_top_window"]["assistant"] == {
        "turn": 2, "window": 0, "of": 1,
        "excerpt": "The capital of France is Paris, a city on the Seine known for its museums."}
    assert detail["toxicity_unjudged"] is None


def test_first_failing_check_wins(counter, profanity, eval_file):
    rows = [
        conv("short_and_toxic", ("user", "Hi"), ("assistant", "Fuck you, idiot.")),
        conv("toxic_and_contaminated", ("user", "Go on"),
             ("assistant", f"{LEAKED}, you fucking idiot piece of shit.")),
    ]
    out = run(rows, make_cfg(eval_file), counter, profanity, eval_file)
    assert reasons(out) == {"short_and_toxic": "too_short_response", "toxic_and_contaminated": "toxic"}
    assert details(out)["toxic_and_contaminated"]["decon_hits_by_set"] == {"heldout": 4}


class FixedScorer:
    name = "fixed"

    def __init__(self, value: float):
        self.value = value
        self.calls: list[list[str]] = []

    def score(self, texts):
        self.calls.append(list(texts))
        return [self.value] * len(texts)


def test_threshold_is_inclusive_and_scoring_is_one_batch(counter, eval_file):
    scorer = FixedScorer(0.5)
    out = run(ROWS[3:], make_cfg(eval_file), counter, scorer, eval_file)
    assert set(reasons(out).values()) == {"toxic"}
    assert len(scorer.calls) == 1  # every window of every user and assistant turn of the table in one call
    # 6 turns (system turns are not scored); SAFE_REPLY is two sentences, so two windows
    assert len(scorer.calls[0]) == 7 and "I am sorry you feel that way." in scorer.calls[0]


def test_toxicity_disabled_leaves_columns_null(counter, eval_file):
    cfg = make_cfg(eval_file, enabled=False)
    out = run(ROWS, cfg, counter, None, eval_file)
    assert reasons(out)["toxic_answer"] == "kept"
    assert out.records.column("toxicity_user").null_count == out.records.num_rows == 3
    assert out.records.column("toxicity_assistant").null_count == 3
    assert all(d["score"] is None for d in out.decisions.to_pylist())
    assert out.stats["toxicity_scorer"] is None


def test_enabled_toxicity_needs_a_scorer(counter, eval_file):
    with pytest.raises(ValueError, match="no toxicity scorer"):
        run(ROWS, make_cfg(eval_file), counter, None, eval_file)


def test_tool_turns_count_as_prompt(counter, profanity, eval_file):
    row = conv("tool", ("user", "What is the capital of France?"), ("assistant", "Let me look that up."),
               ("tool", "Paris"), ("assistant", "The capital of France is Paris, a city on the Seine known for its museums."))
    detail = details(run([row], make_cfg(eval_file), counter, profanity, eval_file))["tool"]
    assert detail["n_tokens_prompt"] == 7 + 1
    assert detail["n_tokens_response"] == counter.count(["Let me look that up."])[0] + 17


def test_base_columns_pass_through_unchanged(counter, profanity, eval_file):
    table = records_from_rows(ROWS)
    out = filter_records(table, make_cfg(eval_file), counter, profanity, {})
    kept_ids = set(out.records.column("example_id").to_pylist())
    expected = table.filter(pa.array([r["example_id"] in kept_ids for r in ROWS]))
    assert out.records.select(RECORD_SCHEMA.names).equals(expected)
    assert reasons(out)["contaminated"] == "kept"  # no eval sets: nothing is contaminated


def test_empty_input(counter, profanity, eval_file):
    out = filter_records(records_from_rows([]), make_cfg(eval_file), counter, profanity, {})
    assert out.decisions.num_rows == 0 and out.records.num_rows == 0
    assert "n_tokens_total" in out.records.schema.names and out.stats["n_in"] == 0


def test_input_hashes_follow_eval_file_bytes(tmp_path, eval_file):
    ws = Workspace(root=tmp_path, warehouse=tmp_path / "wh")
    cfg = FilterConfig(decontaminate={"eval_sets": [EvalSetConfig(name="heldout", path="heldout.jsonl")]})
    before = filter_input_hashes(cfg, ws.resolve_input)
    assert before[0].startswith("tokenizer=builtin:minilm@") and before[1].startswith("toxicity=profanity-check@")
    eval_file.write_text(json.dumps({"text": "something else entirely"}) + "\n", encoding="utf-8")
    after = filter_input_hashes(cfg, ws.resolve_input)
    assert before[:2] == after[:2] and before[2] != after[2]


def test_stage_wrapper_writes_an_artifact(tmp_path, eval_file):
    root, warehouse = tmp_path, tmp_path / "warehouse"
    store = ArtifactStore(warehouse / "artifacts")
    writer = store.writer("dedup", "input-key")
    writer.write_table("records-00000.parquet", records_from_rows(ROWS))
    upstream = writer.commit(inputs=[], config_hash="c", code_hash="c", n_in=6, n_out=6, stats={})
    config = make_cfg("heldout.jsonl").model_dump(mode="json")
    config["length"]["tokenizer"] = "builtin:minilm"
    call = plan_stage("filter", "sftflow.tasks.filters", config, [upstream], LIBRARIES, root=root, warehouse=warehouse)
    manifest, hit = execute(call, filter_stage.compute)
    assert not hit and manifest.n_in == 6 and manifest.n_out == 2
    assert read_records([manifest]).column("example_id").to_pylist() == ["toxic_prompt", "clean"]
    assert execute(call, filter_stage.compute)[1]  # second time: found on disk
