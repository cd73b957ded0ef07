"""Generation limits (truncated and empty answers fail the IF checks) and a quiet evaluate log."""

from __future__ import annotations

import json
import re
import warnings

import pytest

from sftflow.tasks.core.recipe_training import EvalConfig
from sftflow.tasks.evaluate import evaluate_model
from sftflow.tasks.lib.ifeval import IF_PROMPTS
from tests.tasks.lib.tiny_chat_lm import CONVERSATION, GENERAL_TEXTS, TEMPLATE, build_model, save
from tests.tasks.lib.tiny_chat_lm import one_cpu_thread, tokenizer  # noqa: F401 (fixtures)


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tokenizer):
    """random/ (never picks <|im_end|> early: runs to the limit), silent/ (every token is a stop
    token, so each answer ends before its first token), sampling/ (a generation_config asking for
    sampling, as many hub models ship)."""
    root = tmp_path_factory.mktemp("generation")
    save(build_model(tokenizer), tokenizer, root / "random")
    silent = build_model(tokenizer)
    silent.generation_config.eos_token_id = list(range(len(tokenizer)))
    save(silent, tokenizer, root / "silent")
    sampling = build_model(tokenizer)
    sampling.generation_config.update(do_sample=True, temperature=0.7, top_p=0.9, top_k=20)
    save(sampling, tokenizer, root / "sampling")
    return root


def test_a_model_that_answers_nothing_scores_zero_and_truncations_are_counted(folders, tmp_path):
    out = tmp_path / "eval"
    result = evaluate_model(folders / "silent", folders / "random", TEMPLATE, [], [], EvalConfig(max_new_tokens=3),
                            max_length=128, out_dir=out)
    values = {m["metric"]: m for m in result["metrics"]}
    # an empty answer passes word_limit, no_commas, forbidden_word and sentence_limit as text: 0.2 / 0.32
    assert values["if_prompt_acc"]["value"] == 0.0 and values["if_instruction_acc"]["value"] == 0.0
    assert values["if_prompt_acc"]["detail"] == {"n_prompts": len(IF_PROMPTS), "n_truncated": 0,
                                                 "n_empty": len(IF_PROMPTS), "max_new_tokens": 3}
    # the random base runs into the 3-token limit on every prompt: truncated, so it fails every check too
    assert values["if_prompt_acc_base"]["value"] == 0.0
    assert values["if_prompt_acc_base"]["detail"]["n_truncated"] == len(IF_PROMPTS)
    generations = json.loads((out / "generations.json").read_text())
    assert {(g["tuned"], g["truncated_tuned"], g["truncated_base"]) for g in generations} == {("", False, True)}
    report = json.loads((out / "report.json").read_text())
    assert report["generation_counts"] == {"base": {"n_generations": 20, "n_truncated": 20, "n_empty": 0},
                                     "tuned": {"n_generations": 20, "n_truncated": 0, "n_empty": 20}}
    assert {item["reason"] for item in report["if_eval"]["tuned"]["items"]} == {"empty"}
    assert "- base: 20 of 20 generations truncated at eval.max_new_tokens, 0 empty" in result["report_md"]
    assert "**base** — checks fail (truncated at eval.max_new_tokens)" in result["report_md"]


def test_evaluate_logs_one_line_per_phase_and_model_and_nothing_else(folders, tmp_path, capfd):
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # batch_size=2: ten generate calls per model, so a per-batch warning would show ten times
        evaluate_model(folders / "sampling", folders / "random", TEMPLATE, [{"messages": CONVERSATION}], GENERAL_TEXTS,
                       EvalConfig(max_new_tokens=2, batch_size=2), max_length=128, out_dir=tmp_path)
    printed = capfd.readouterr()
    lines = printed.out.splitlines()
    assert len(lines) == 4, lines
    assert lines[0] == ("[evaluate] base and tuned in float32 on cpu: 1 held-out rows, 2 general texts, "
                        "20 prompts at up to 2 new tokens") or "cuda" in lines[0]
    for label, line in zip(("base", "tuned"), lines[1:3]):
        assert re.fullmatch(rf"\[evaluate\] {label}: held-out loss \d+\.\d{{3}} on 1 rows, general ppl \d+\.\d, "
                            r"20 generations \(\d+ truncated, \d+ empty\) in \d+\.\d s", line), line
    assert lines[3].startswith("[evaluate] gate: ")
    assert printed.err == ""  # no progress bar ("Loading weights") and no logged generation warning
    assert [str(w.message) for w in caught] == []
