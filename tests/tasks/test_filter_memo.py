"""The filter stage's row memo: a grown source measures only its new and edited rows and writes the
artifact a cold run writes; a threshold change re-decides every row from the memo; what changes a
row's measures reuses nothing.

The rows have the shapes the filter must get right: toxic turns deep inside long answers (windows),
a turn in a script the backend cannot read (unjudged), a contaminated question, short answers,
long rows, a system prompt shared by every row, and two rows with the same turns.
"""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from sftflow.tasks import filters
from sftflow.tasks.core.artifacts import ArtifactStore
from sftflow.tasks.core.recipe import Recipe
from sftflow.tasks.core.row_memo import RowMemo
from sftflow.tasks.core.stage import execute
from sftflow.tasks.core.workspace import Workspace
from tests.stage_helpers import records_from_rows

N_ROWS = 200
SYSTEM = "You are a helpful assistant. Answer carefully and cite the tools you use. " * 4
EVAL_QUESTION = "what is the boiling point of water at the top of mount everest in degrees celsius"
FILLER = "the river runs past the old mill and the children play on the green banks all day long "


def row(i: int, response: str | None = None) -> dict:
    user = f"question {i}: tell me about topic {i % 17}"
    if i % 23 == 0:
        user = EVAL_QUESTION  # contaminated
    answer = response or f"answer {i} " + FILLER * (i % 5)
    if i % 13 == 0:
        answer = FILLER * 6 + " you stupid idiot, shut up " + FILLER * 6  # toxic in the middle of a long turn
    if i % 19 == 0:
        answer = "这是一个很长的中文回答，用来检查无法判断的脚本。" * 3  # unjudged script
    if i % 29 == 0:
        answer = "ok"  # too short
    if i % 31 == 0:
        answer = FILLER * 40  # too long for max_total_tokens below
    return {"example_id": f"ex{i:04d}", "content_hash": f"h{i}", "source": "s", "source_format": "openai",
            "source_uri": "s.jsonl", "source_row": i, "category": "qa",
            "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user},
                         {"role": "assistant", "content": answer}]}


def base_rows() -> list[dict]:
    rows = [row(i) for i in range(N_ROWS)]
    rows[11] = {**row(11), "messages": row(10)["messages"]}  # the same turns twice: measured once
    return rows


def grown_rows() -> tuple[list[dict], int]:
    """The base rows with 3 edited answers and 5 new rows; returns them and how many rows are new."""
    rows = base_rows()
    for i in (3, 50, 199):
        rows[i] = row(i, response=f"a better answer {i} " + FILLER)
    rows += [row(i) for i in range(N_ROWS, N_ROWS + 5)]
    return rows, 3 + 5


@pytest.fixture
def measured(monkeypatch) -> list[list[list[dict]]]:
    """The rows each `measure_rows` call measured, in call order."""
    calls: list[list[list[dict]]] = []
    real = filters.measure_rows

    def counting(rows, *args, **kwargs):
        calls.append(rows)
        return real(rows, *args, **kwargs)

    monkeypatch.setattr(filters, "measure_rows", counting)
    return calls


def run(tmp_path, name: str, rows: list[dict], **filters_section):
    """Plan and execute the filter stage in the project `tmp_path/name` on `rows` (two records parts)."""
    root = tmp_path / name
    root.mkdir(parents=True, exist_ok=True)
    (root / "heldout.jsonl").write_text(json.dumps({"text": EVAL_QUESTION}) + "\n", encoding="utf-8")
    ws = Workspace(root=root, warehouse=root / "warehouse")
    writer = ArtifactStore(ws.artifacts_dir).writer("dedup", f"in-{len(rows)}")
    half = len(rows) // 2
    writer.write_table("records-00000.parquet", records_from_rows(rows[:half]))
    writer.write_table("records-00001.parquet", records_from_rows(rows[half:]))
    upstream = writer.commit(inputs=[], config_hash="c", code_hash="c", n_in=len(rows), n_out=len(rows), stats={})
    section = {"length": {"min_response_tokens": 3, "max_total_tokens": 400},
               "toxicity": {"backend": "profanity-check", "roles": ["assistant"]},
               "decontaminate": {"eval_sets": [{"name": "heldout", "path": "heldout.jsonl"}], "ngram": 8}}
    for field, value in filters_section.items():
        part, name_ = field.split("__")
        section[part] = {**section[part], name_: value}
    recipe = Recipe.model_validate({"name": "r", "sources": [{"name": "s", "format": "openai", "path": "s.jsonl"}],
                                    "filters": section})
    call = filters.plan(recipe, [upstream], ws)
    manifest, hit = execute(call, filters.filter_stage.compute)
    assert not hit
    return call, manifest


def content(manifest) -> dict:
    """What the artifact holds: its records and decisions, row by row, and their files' bytes."""
    records = [pq.read_table(path).to_pylist() for path in manifest.files_named("records")]
    return {"records": records, "decisions": pq.read_table(manifest.file("decisions.parquet")).to_pylist(),
            "files": sorted((f.name, f.sha256) for f in manifest.files)}


def n_measured(calls: list[list[list[dict]]]) -> int:
    return sum(len(rows) for rows in calls)


def test_the_rows_have_every_shape(tmp_path, measured):
    _, manifest = run(tmp_path, "p", base_rows())
    assert manifest.stats["reasons"].keys() == {"kept", "toxic", "contaminated", "too_short_response", "too_long"}
    assert manifest.stats["toxicity_unjudged_rows"] > 0


def test_a_grown_source_measures_only_new_and_edited_rows_and_writes_what_a_cold_run_writes(tmp_path, measured):
    run(tmp_path, "nightly", base_rows())
    assert n_measured(measured) == N_ROWS - 1  # rows 10 and 11 share their turns
    grown, n_new = grown_rows()
    measured.clear()
    _, incremental = run(tmp_path, "nightly", grown)
    assert n_measured(measured) == n_new
    assert (incremental.stats["n_measured"], incremental.stats["n_reused"]) == (n_new, len(grown) - n_new)

    _, cold = run(tmp_path, "cold", grown)
    assert content(incremental) == content(cold)
    for name in ("reasons", "toxicity_unjudged_rows", "toxicity_unjudged_by_script", "rows_with_hits_by_set"):
        assert incremental.stats[name] == cold.stats[name]


def test_threshold_changes_re_decide_from_the_memo(tmp_path, measured):
    first, _ = run(tmp_path, "p", base_rows())
    for section in [{"length__max_total_tokens": 100}, {"toxicity__threshold": 0.2}, {"length__min_response_tokens": 9}]:
        measured.clear()
        call, manifest = run(tmp_path, "p", base_rows(), **section)
        assert call.params[filters.MEMO_PARAM] == first.params[filters.MEMO_PARAM]
        assert n_measured(measured) == 0
        assert manifest.stats["n_reused"] == N_ROWS
        _, cold = run(tmp_path, f"cold-{next(iter(section))}", base_rows(), **section)
        assert content(manifest) == content(cold)


@pytest.mark.parametrize("section", [{"toxicity__window": "turn"}, {"toxicity__roles": ["user", "assistant"]},
                                     {"decontaminate__ngram": 6}, {"length__tokenizer": "gpt2-missing"}])
def test_what_changes_a_rows_measures_gets_another_memo(tmp_path, section):
    first, _ = run(tmp_path, "p", base_rows()[:10])
    recipe = Recipe.model_validate({"name": "r", "sources": [{"name": "s", "format": "openai", "path": "s.jsonl"}]})
    base = recipe.filters.canonical()
    changed = json.loads(json.dumps(base))
    for field, value in section.items():
        part, name = field.split("__")
        changed[part][name] = value
    assert filters.memo_fingerprint(base, []) != filters.memo_fingerprint(changed, [])
    assert filters.memo_fingerprint(base, ["tokenizer=a"]) != filters.memo_fingerprint(base, ["tokenizer=b"])
    unkeyed = json.loads(json.dumps(base))
    unkeyed["toxicity"]["batch_size"] = 3
    assert filters.memo_fingerprint(base, []) == filters.memo_fingerprint(unkeyed, [])
    assert RowMemo(tmp_path / "p" / "warehouse", "filter", first.params[filters.MEMO_PARAM]).files()
