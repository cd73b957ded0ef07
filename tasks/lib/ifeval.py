"""Verifiable instruction-following checks, in the spirit of IFEval (written for this project).

Each check is a pure function `(response: str, **args) -> bool` that a program can decide without
a judge: "at most 40 words", "no commas", "exactly 3 bullet points". `IF_PROMPTS` is a small
built-in set of prompts, each carrying the checks its instructions imply; `score_responses`
turns a model's responses into prompt-level accuracy (every check of a prompt passes) and
instruction-level accuracy (share of all checks that pass).

An answer that is empty (whitespace only) or truncated (generation hit its token limit before the
model ended its turn) fails every check of its prompt, whatever the checks would say on the text:
"at most 30 words" or "no commas" hold for an empty string, and a cut-off answer was never
finished, so neither is an instruction followed. `score_responses` applies this rule in one place
and records the reason ("empty" or "truncated") per item; the check functions stay pure.

Conventions every check shares (so that the same response is judged the same way everywhere):

- A *word* is a whitespace-separated token holding at least one letter or digit, so list
  markers ("-", "*") and stray punctuation are not words.
- A *paragraph* is a non-blank chunk between blank lines (a line holding only whitespace is blank).
- A *bullet* is a line that starts, after indentation, with "- " or "* ".
- Phrases (`starts_with`, `ends_with`) are compared exactly (case-sensitive) after the response's
  surrounding whitespace is stripped; keywords are matched case-insensitively on word boundaries.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

WORD = re.compile(r"\S*[^\W_]\S*")  # a whitespace token with at least one letter or digit
BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")
CODE_FENCE = re.compile(r"^```[A-Za-z]*\s*\n(.*)\n\s*```$", re.DOTALL)


def _words(response: str) -> list[str]:
    return WORD.findall(response)


def _keyword_pattern(keyword: str) -> re.Pattern[str]:
    # \b only means "word boundary" next to a word character; a keyword such as "C++" or "#tag"
    # gets a looser boundary (not preceded/followed by a word character) so it can still match.
    return re.compile(rf"(?<!\w){re.escape(keyword.strip())}(?!\w)", re.IGNORECASE)


# ----------------------------------------------------------------------------------- checks --
def word_limit(response: str, max_words: int) -> bool:
    """At most `max_words` words.

    >>> word_limit("one two three", max_words=3), word_limit("one two three four", max_words=3)
    (True, False)
    """
    return len(_words(response)) <= max_words


def min_words(response: str, min_count: int) -> bool:
    """At least `min_count` words.

    >>> min_words("- a b", min_count=3)
    False
    """
    return len(_words(response)) >= min_count


def lowercase_only(response: str) -> bool:
    """No uppercase letter anywhere, and at least one letter (an empty answer is not lowercase prose).

    >>> lowercase_only("all quiet here."), lowercase_only("All quiet."), lowercase_only("42")
    (True, False, False)
    """
    return any(ch.isalpha() for ch in response) and response == response.lower()


def no_commas(response: str) -> bool:
    """No comma (ASCII or the full-width and ideographic commas).

    >>> no_commas("red and blue"), no_commas("red, blue")
    (True, False)
    """
    return not any(ch in response for ch in ",，、")


def valid_json(response: str) -> bool:
    """The whole response is one JSON value; a single ```json fence around it is tolerated.

    Text before or after the JSON fails: a program consuming the answer could not parse it.

    >>> valid_json(' {"a": 1} '), valid_json('Here it is: {"a": 1}')
    (True, False)
    """
    text = response.strip()
    fenced = CODE_FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    if not text:
        return False
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def bullet_count(response: str, count: int) -> bool:
    """Exactly `count` lines are bullets ("- " or "* " after indentation).

    >>> bullet_count("- a\\n- b\\n* c", count=3), bullet_count("- a\\n-b", count=2)
    (True, False)
    """
    bullets = [line for line in response.splitlines() if line.lstrip().startswith(("- ", "* "))]
    return len(bullets) == count


def required_keyword(response: str, keyword: str) -> bool:
    """Contains `keyword` as a whole word (or phrase), case-insensitively.

    >>> required_keyword("Rivers flow.", keyword="river"), required_keyword("A River.", keyword="river")
    (False, True)
    """
    return bool(_keyword_pattern(keyword).search(response))


def forbidden_word(response: str, word: str) -> bool:
    """Does not contain `word` as a whole word, case-insensitively.

    >>> forbidden_word("The sea is calm.", word="ocean"), forbidden_word("OCEAN waves", word="ocean")
    (True, False)
    """
    return not _keyword_pattern(word).search(response)


def starts_with(response: str, phrase: str) -> bool:
    """Begins with exactly `phrase` once leading whitespace is removed.

    >>> starts_with("  Dear team, hi", phrase="Dear team"), starts_with("dear team", phrase="Dear team")
    (True, False)
    """
    return response.lstrip().startswith(phrase)


def ends_with(response: str, phrase: str) -> bool:
    """Ends with exactly `phrase` once trailing whitespace is removed.

    >>> ends_with("Done. Any questions?  \\n", phrase="Any questions?")
    True
    """
    return response.rstrip().endswith(phrase)


def paragraph_count(response: str, count: int) -> bool:
    """Exactly `count` non-blank paragraphs separated by blank lines.

    >>> paragraph_count("First.\\n\\nSecond.\\n  \\nThird.", count=3), paragraph_count("One.\\nStill one.", count=2)
    (True, False)
    """
    paragraphs = [chunk for chunk in BLANK_LINE.split(response) if chunk.strip()]
    return len(paragraphs) == count


def uppercase_word_count(response: str, min_count: int) -> bool:
    """At least `min_count` words written in capitals (two or more letters, so "I" and "A" do not count).

    >>> uppercase_word_count("This is VERY IMPORTANT, I say", min_count=2)
    True
    """
    shouting = [w for w in re.findall(r"[^\W\d_]+", response) if len(w) >= 2 and w.isupper()]
    return len(shouting) >= min_count


def sentence_limit(response: str, max_sentences: int) -> bool:
    """At most `max_sentences` sentences (runs of text ended by ., ! or ?, or by the end of the text).

    >>> sentence_limit("One. Two! Three?", max_sentences=2), sentence_limit("Just one line", max_sentences=1)
    (False, True)
    """
    sentences = [s for s in re.split(r"[.!?]+(?:\s+|$)", response.strip()) if s.strip()]
    return len(sentences) <= max_sentences


CHECKS: dict[str, Callable[..., bool]] = {
    "word_limit": word_limit,
    "min_words": min_words,
    "lowercase_only": lowercase_only,
    "no_commas": no_commas,
    "valid_json": valid_json,
    "bullet_count": bullet_count,
    "required_keyword": required_keyword,
    "forbidden_word": forbidden_word,
    "starts_with": starts_with,
    "ends_with": ends_with,
    "paragraph_count": paragraph_count,
    "uppercase_word_count": uppercase_word_count,
    "sentence_limit": sentence_limit,
}


def run_check(response: str, check: dict[str, Any], where: str = "check") -> bool:
    """Run one `{kind, args}` check; unknown kinds and wrong arguments are errors naming `where`."""
    kind = check.get("kind")
    if kind not in CHECKS:
        raise ValueError(f"{where}: unknown check kind {kind!r}; known kinds: {', '.join(sorted(CHECKS))}")
    args = check.get("args") or {}
    try:
        return bool(CHECKS[kind](response, **args))
    except TypeError as exc:
        raise ValueError(f"{where}: check {kind!r} got arguments {args!r}: {exc}") from None


# ----------------------------------------------------------------------------- prompt set --
def _check(kind: str, **args: Any) -> dict[str, Any]:
    return {"kind": kind, "args": args}


IF_PROMPTS: list[dict[str, Any]] = [
    {"id": "if-01", "prompt": "Describe a lighthouse at night in at most 30 words.",
     "checks": [_check("word_limit", max_words=30)]},
    {"id": "if-02", "prompt": "Explain why bread goes stale. Write at least 40 words.",
     "checks": [_check("min_words", min_count=40)]},
    {"id": "if-03", "prompt": "Write a short note to a neighbour about a lost cat. Use only lowercase letters.",
     "checks": [_check("lowercase_only")]},
    {"id": "if-04", "prompt": "List your three favourite seasons and say why, without using any commas.",
     "checks": [_check("no_commas")]},
    {"id": "if-05", "prompt": "Give the name and age of a fictional pilot as a JSON object with keys "
                              "\"name\" and \"age\". Reply with the JSON only.",
     "checks": [_check("valid_json")]},
    {"id": "if-06", "prompt": "Give exactly 3 tips for keeping a houseplant alive, as a bulleted list "
                              "using \"- \" at the start of each line.",
     "checks": [_check("bullet_count", count=3)]},
    {"id": "if-07", "prompt": "Write two sentences about autumn. Include the word \"harvest\".",
     "checks": [_check("required_keyword", keyword="harvest"), _check("sentence_limit", max_sentences=2)]},
    {"id": "if-08", "prompt": "Describe the ocean without using the word \"water\".",
     "checks": [_check("forbidden_word", word="water")]},
    {"id": "if-09", "prompt": "Start your answer with \"In short,\" and explain what a compiler does.",
     "checks": [_check("starts_with", phrase="In short,")]},
    {"id": "if-10", "prompt": "Explain how to boil an egg. End your answer with the exact phrase "
                              "\"Enjoy your meal.\"",
     "checks": [_check("ends_with", phrase="Enjoy your meal.")]},
    {"id": "if-11", "prompt": "Write about city gardens in exactly 2 paragraphs separated by a blank line.",
     "checks": [_check("paragraph_count", count=2)]},
    {"id": "if-12", "prompt": "Warn a friend about a slippery floor. Write at least 2 words in ALL CAPITALS.",
     "checks": [_check("uppercase_word_count", min_count=2)]},
    {"id": "if-13", "prompt": "Summarize the water cycle in one sentence.",
     "checks": [_check("sentence_limit", max_sentences=1)]},
    {"id": "if-14", "prompt": "Name 4 planets as a bulleted list with \"- \" bullets, and mention \"Mars\".",
     "checks": [_check("bullet_count", count=4), _check("required_keyword", keyword="Mars")]},
    {"id": "if-15", "prompt": "in lowercase only and in at most 25 words, say what a river is.",
     "checks": [_check("lowercase_only"), _check("word_limit", max_words=25)]},
    {"id": "if-16", "prompt": "Return a JSON list of three colours. Output nothing but the JSON and do not "
                              "use the word \"red\".",
     "checks": [_check("valid_json"), _check("forbidden_word", word="red")]},
    {"id": "if-17", "prompt": "Begin with \"Dear reader\" and end with \"Best wishes\" in a short welcome note.",
     "checks": [_check("starts_with", phrase="Dear reader"), _check("ends_with", phrase="Best wishes")]},
    {"id": "if-18", "prompt": "Write 3 paragraphs about learning to swim, at least 60 words in total.",
     "checks": [_check("paragraph_count", count=3), _check("min_words", min_count=60)]},
    {"id": "if-19", "prompt": "Describe a thunderstorm with no commas and at least 3 words in CAPITALS.",
     "checks": [_check("no_commas"), _check("uppercase_word_count", min_count=3)]},
    {"id": "if-20", "prompt": "Explain what a map legend is in at most 3 sentences and include the word "
                              "\"symbol\".",
     "checks": [_check("sentence_limit", max_sentences=3), _check("required_keyword", keyword="symbol")]},
]


# -------------------------------------------------------------------------------- scoring --
def unscorable_reason(response: str, truncated: bool = False) -> str | None:
    """Why a response fails every check regardless of its text: "empty", "truncated", or None.

    >>> unscorable_reason("  \\n "), unscorable_reason("Fine.", truncated=True), unscorable_reason("Fine.")
    ('empty', 'truncated', None)
    """
    if not response.strip():
        return "empty"
    if truncated:
        return "truncated"
    return None


def score_responses(items: list[dict[str, Any]], responses: list[str],
                    truncated: list[bool] | None = None) -> dict[str, Any]:
    """Score responses (same order as items) against each item's checks.

    `truncated[i]` tells that response i hit the generation limit before the model ended its turn.
    An empty or truncated response fails every check of its item (see `unscorable_reason`); the
    item and each of its checks then carry that `reason`.

    Returns prompt_level_accuracy (share of items whose checks all pass), instruction_level_accuracy
    (share of all checks that pass), per_kind {kind: {passed, total, accuracy}}, n_empty,
    n_truncated and per-item results.

    >>> items = [{"id": "a", "prompt": "p", "checks": [_check("no_commas"), _check("lowercase_only")]},
    ...          {"id": "b", "prompt": "q", "checks": [_check("no_commas")]}]
    >>> s = score_responses(items, ["no commas Here", "fine"])
    >>> s["prompt_level_accuracy"], s["instruction_level_accuracy"]
    (0.5, 0.6666666666666666)
    >>> s = score_responses(items, ["", "fine"], truncated=[False, True])
    >>> s["prompt_level_accuracy"], s["n_empty"], s["n_truncated"], [i["reason"] for i in s["items"]]
    (0.0, 1, 1, ['empty', 'truncated'])
    """
    if len(items) != len(responses):
        raise ValueError(f"score_responses: {len(items)} items but {len(responses)} responses; give one response per item")
    if truncated is None:
        truncated = [False] * len(responses)
    if len(truncated) != len(responses):
        raise ValueError(f"score_responses: {len(responses)} responses but {len(truncated)} truncated flags; "
                         "give one flag per response")
    if not items:
        raise ValueError("score_responses: no items to score")
    per_item: list[dict[str, Any]] = []
    per_kind: dict[str, dict[str, Any]] = {}
    n_prompts_passed = n_checks = n_checks_passed = 0
    reasons: list[str | None] = []
    for index, (item, response, cut) in enumerate(zip(items, responses, truncated)):
        item_id = item.get("id", f"#{index}")
        checks = item.get("checks") or []
        if not checks:
            raise ValueError(f"score_responses: item {item_id!r} has no checks; every scored prompt needs at least one")
        reason = unscorable_reason(response, bool(cut))
        reasons.append(reason)
        results = []
        for check in checks:
            # run even when the answer is unscorable, so a wrong kind or argument is still an error
            passed = run_check(response, check, where=f"item {item_id!r}") and reason is None
            result = {"kind": check["kind"], "args": dict(check.get("args") or {}), "passed": passed}
            if reason is not None:
                result["reason"] = reason
            results.append(result)
            tally = per_kind.setdefault(check["kind"], {"passed": 0, "total": 0})
            tally["passed"] += int(passed)
            tally["total"] += 1
        all_passed = all(r["passed"] for r in results)
        n_prompts_passed += int(all_passed)
        n_checks += len(results)
        n_checks_passed += sum(r["passed"] for r in results)
        per_item.append({"id": item_id, "passed": all_passed, "reason": reason, "checks": results})
    for tally in per_kind.values():
        tally["accuracy"] = tally["passed"] / tally["total"]
    return {
        "prompt_level_accuracy": n_prompts_passed / len(items),
        "instruction_level_accuracy": n_checks_passed / n_checks,
        "n_prompts": len(items),
        "n_instructions": n_checks,
        "n_empty": reasons.count("empty"),
        "n_truncated": reasons.count("truncated"),
        "per_kind": dict(sorted(per_kind.items())),
        "items": per_item,
    }
