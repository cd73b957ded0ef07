"""Instruction-following checks on literal responses, and the accuracy arithmetic."""

from __future__ import annotations

import pytest

from sftflow.tasks.lib.ifeval import CHECKS, IF_PROMPTS, run_check, score_responses


@pytest.mark.parametrize(
    "kind, args, response, expected",
    [
        ("word_limit", {"max_words": 3}, "one two three", True),
        ("word_limit", {"max_words": 3}, "one two three four", False),
        ("word_limit", {"max_words": 3}, "- one\n- two -- three !", True),  # markers and dashes are not words
        ("word_limit", {"max_words": 0}, "", True),
        ("min_words", {"min_count": 3}, "it's well-known, truly", True),
        ("min_words", {"min_count": 3}, "two words   \n", False),
        ("lowercase_only", {}, "all quiet on the river.\n", True),
        ("lowercase_only", {}, "all quiet on the River.", False),
        ("lowercase_only", {}, "   ", False),  # nothing written is not lowercase prose
        ("lowercase_only", {}, "café crème", True),
        ("lowercase_only", {}, "über ÉTÉ", False),
        ("no_commas", {}, "red and blue and green", True),
        ("no_commas", {}, "red, blue", False),
        ("no_commas", {}, "红色，蓝色", False),  # full-width comma
        ("valid_json", {}, '{"name": "Ada", "age": 36}', True),
        ("valid_json", {}, '  [1, 2, 3]  \n', True),
        ("valid_json", {}, '```json\n{"a": 1}\n```', True),
        ("valid_json", {}, 'Sure! {"a": 1}', False),  # text around the JSON
        ("valid_json", {}, '{"a": 1} Hope this helps.', False),
        ("valid_json", {}, "{'a': 1}", False),  # single quotes are not JSON
        ("valid_json", {}, "", False),
        ("bullet_count", {"count": 3}, "Tips:\n- water\n- light\n  * soil\n", True),
        ("bullet_count", {"count": 3}, "- water\n- light", False),
        ("bullet_count", {"count": 2}, "- water\n-light\n*soil\n- sun", True),  # no space: not a bullet
        ("required_keyword", {"keyword": "harvest"}, "The HARVEST was good.", True),
        ("required_keyword", {"keyword": "harvest"}, "Harvesting is hard.", False),  # whole word only
        ("required_keyword", {"keyword": "C++"}, "I like C++ a lot", True),
        ("forbidden_word", {"word": "water"}, "The sea is deep and blue.", True),
        ("forbidden_word", {"word": "water"}, "Salt Water everywhere", False),
        ("forbidden_word", {"word": "water"}, "waterfalls are loud", True),
        ("starts_with", {"phrase": "In short,"}, "\n  In short, it translates code.", True),
        ("starts_with", {"phrase": "In short,"}, "in short, it translates code.", False),  # case-sensitive
        ("ends_with", {"phrase": "Enjoy your meal."}, "Boil for 8 minutes. Enjoy your meal.  \n\n", True),
        ("ends_with", {"phrase": "Enjoy your meal."}, "Enjoy your meal. Bye.", False),
        ("paragraph_count", {"count": 2}, "Gardens grow.\n\nPeople gather.", True),
        ("paragraph_count", {"count": 2}, "\n\nGardens grow.\n \t\nPeople gather.\n\n\n", True),
        ("paragraph_count", {"count": 2}, "Gardens grow.\nPeople gather.", False),  # one line break: one paragraph
        ("paragraph_count", {"count": 3}, "A.\r\n\r\nB.\r\n\r\nC.", True),
        ("uppercase_word_count", {"min_count": 2}, "WATCH OUT, the floor is wet", True),
        ("uppercase_word_count", {"min_count": 2}, "I said A floor is WET", False),  # single letters do not count
        ("sentence_limit", {"max_sentences": 1}, "The sun heats water, which rises as vapour.", True),
        ("sentence_limit", {"max_sentences": 1}, "Water rises. It falls again!", False),
        ("sentence_limit", {"max_sentences": 2}, "Wait... really?! Yes", False),
    ],
)
def test_check(kind, args, response, expected):
    assert CHECKS[kind](response, **args) is expected


def test_there_are_at_least_ten_kinds_and_the_prompt_set_uses_each():
    assert len(CHECKS) >= 10
    used = {check["kind"] for item in IF_PROMPTS for check in item["checks"]}
    assert used == set(CHECKS)
    assert len({item["id"] for item in IF_PROMPTS}) == len(IF_PROMPTS) == 20
    assert sum(len(item["checks"]) == 2 for item in IF_PROMPTS) >= 5


def test_every_built_in_check_accepts_its_arguments():
    for item in IF_PROMPTS:
        for check in item["checks"]:
            assert run_check("Some text.", check, where=item["id"]) in (True, False)


def test_run_check_errors_name_the_item():
    with pytest.raises(ValueError, match=r"item 'x': unknown check kind 'shout'"):
        run_check("hi", {"kind": "shout"}, where="item 'x'")
    with pytest.raises(ValueError, match=r"item 'x': check 'word_limit' got arguments \{'limit': 3\}"):
        run_check("hi", {"kind": "word_limit", "args": {"limit": 3}}, where="item 'x'")


ITEMS = [
    {"id": "a", "prompt": "p", "checks": [{"kind": "no_commas", "args": {}},
                                         {"kind": "word_limit", "args": {"max_words": 3}}]},
    {"id": "b", "prompt": "p", "checks": [{"kind": "lowercase_only", "args": {}}]},
    {"id": "c", "prompt": "p", "checks": [{"kind": "no_commas", "args": {}},
                                         {"kind": "required_keyword", "args": {"keyword": "moon"}}]},
]


def test_accuracy_arithmetic():
    responses = [
        "short and sweet",   # a: no commas ok, 3 words ok -> prompt passes
        "Not lowercase",     # b: fails
        "the moon, bright",  # c: comma fails, keyword ok -> prompt fails
    ]
    scored = score_responses(ITEMS, responses)
    assert scored["prompt_level_accuracy"] == pytest.approx(1 / 3)
    assert scored["instruction_level_accuracy"] == pytest.approx(3 / 5)
    assert scored["n_prompts"] == 3 and scored["n_instructions"] == 5
    assert scored["per_kind"] == {
        "lowercase_only": {"passed": 0, "total": 1, "accuracy": 0.0},
        "no_commas": {"passed": 1, "total": 2, "accuracy": 0.5},
        "required_keyword": {"passed": 1, "total": 1, "accuracy": 1.0},
        "word_limit": {"passed": 1, "total": 1, "accuracy": 1.0},
    }
    assert [item["passed"] for item in scored["items"]] == [True, False, False]
    assert [c["passed"] for c in scored["items"][2]["checks"]] == [False, True]


def test_all_pass_and_all_fail():
    assert score_responses(ITEMS, ["a b", "x", "moon"])["prompt_level_accuracy"] == 1.0
    none = score_responses(ITEMS, ["a, b, c, d", "X", "A, b"])
    assert none["prompt_level_accuracy"] == 0.0 and none["instruction_level_accuracy"] == 0.0


def test_score_responses_refuses_mismatched_or_empty_input():
    with pytest.raises(ValueError, match="3 items but 2 responses"):
        score_responses(ITEMS, ["a", "b"])
    with pytest.raises(ValueError, match="no items"):
        score_responses([], [])
    with pytest.raises(ValueError, match="item 'z' has no checks"):
        score_responses([{"id": "z", "prompt": "p", "checks": []}], ["r"])


# ------------------------------------------------------------------ empty and truncated answers --
@pytest.mark.parametrize("empty", ["", "  \n\t "])
def test_an_empty_answer_fails_every_built_in_prompt(empty):
    # word_limit, no_commas, forbidden_word and sentence_limit all hold on "": without the rule an
    # empty answer scored 0.2 prompt-level and 0.32 instruction-level on IF_PROMPTS
    scored = score_responses(IF_PROMPTS, [empty] * len(IF_PROMPTS))
    assert scored["prompt_level_accuracy"] == 0.0
    assert scored["instruction_level_accuracy"] == 0.0
    assert scored["n_empty"] == len(IF_PROMPTS) and scored["n_truncated"] == 0
    assert {item["reason"] for item in scored["items"]} == {"empty"}
    assert all(check["reason"] == "empty" and check["passed"] is False
               for item in scored["items"] for check in item["checks"])


def test_a_truncated_answer_fails_even_when_its_text_would_pass():
    responses = ["a b", "x", "moon"]  # every check of ITEMS passes on these
    assert score_responses(ITEMS, responses)["prompt_level_accuracy"] == 1.0
    scored = score_responses(ITEMS, responses, truncated=[True, False, False])
    assert [item["passed"] for item in scored["items"]] == [False, True, True]
    assert [item["reason"] for item in scored["items"]] == ["truncated", None, None]
    assert [c["passed"] for c in scored["items"][0]["checks"]] == [False, False]
    assert scored["prompt_level_accuracy"] == pytest.approx(2 / 3)
    assert scored["instruction_level_accuracy"] == pytest.approx(3 / 5)
    assert scored["n_truncated"] == 1 and scored["n_empty"] == 0
    assert scored["per_kind"]["no_commas"] == {"passed": 1, "total": 2, "accuracy": 0.5}


def test_unscorable_answers_still_get_their_checks_validated():
    with pytest.raises(ValueError, match=r"item 'z': unknown check kind 'shout'"):
        score_responses([{"id": "z", "prompt": "p", "checks": [{"kind": "shout"}]}], [""])
    with pytest.raises(ValueError, match="3 responses but 2 truncated flags"):
        score_responses(ITEMS, ["a", "b", "c"], truncated=[False, True])
