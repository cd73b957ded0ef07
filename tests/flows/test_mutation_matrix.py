"""The mutation matrix: one complete run, then one single change at a time.

For every change, exactly the stages whose key it changes recompute, plus those downstream of an
artifact whose bytes changed; everything upstream and unrelated is a cache hit, and irrelevant
edits recompute nothing. Before each run, `sftflow plan` (flows/plan.py) must have predicted it:
a stage it calls cached is served, one it says computes does, and every computed stage says why.
A change that reaches the data stages runs to mix: train's and evaluate's keys hold mix's data
hash, so once mix exists the plan knows for certain whether they compute (training takes most of
a run's time; the rows that change only train or evaluate run them for real). A stage's inputs enter downstream keys by content hash, so a change that
leaves a stage's output byte-identical (a refactor, a library upgrade that computes the same
thing) stops there: the rows marked "same bytes" below check that early cut-off on purpose.

A code row edits a copy of the real source file and makes the code fingerprint read the copy for
that module, so the import walk itself decides which keys the edit reaches: a fingerprint that
follows too little (a stage that runs the file but misses its edit) or too much (a report or an
error message that re-runs the data stages) shows up as a wrong row. Each edit replaces text that
must be in the file, so a file that moved or changed fails here instead of passing vacuously. An
edit that changes behaviour also patches the running function (the filter row): the pipeline
imports the real modules, not the copies.

The rendered matrix must equal the table in docs/caching.md (between the markers), so the docs
always show what this test saw. Results also land in build/mutation-matrix.md.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from sftflow.flows.plan import CACHED, COMPUTES, IF_INPUT_CHANGES, plan_run
from sftflow.tasks.core import cache_keys
from sftflow.tasks.core.why import input_name
from tests.flows.edits import _edit_filter_code, _edit_module_file, _edit_source_row

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "caching.md"
BEGIN, END = "<!-- mutation-matrix:begin -->", "<!-- mutation-matrix:end -->"
pytestmark = pytest.mark.slow

ALL = ("ingest[alpaca_sample]", "ingest[sharegpt_sample]", "ingest[openai_sample]",
       "normalize[alpaca_sample]", "normalize[sharegpt_sample]", "normalize[openai_sample]",
       "dedup", "filter", "score", "mix", "train", "evaluate")
FROM_DEDUP = ("dedup", "filter", "score", "mix", "train", "evaluate")
MODEL_STAGES = ("train", "evaluate")


@dataclass
class Mutation:
    change: str  # what a user did, in their words
    expected: tuple[str, ...]  # stages that must recompute; all others must be cache hits
    overrides: tuple[str, ...] = ()
    edit: Callable[[Path, pytest.MonkeyPatch], None] | None = None


def _code_edit(module: str, old: str, new: str):
    def edit(root: Path, mp: pytest.MonkeyPatch) -> None:
        _edit_module_file(root, mp, module, old, new)

    return edit


def _library_upgrade(name: str):
    def edit(_root: Path, mp: pytest.MonkeyPatch) -> None:
        real = cache_keys.library_versions

        def versions(names):
            found = real(names)
            return {k: (v + ".post1" if k == name else v) for k, v in found.items()}

        mp.setattr("sftflow.tasks.core.stage.library_versions", versions)

    return edit


def _recipe_edit(old: str, new: str):
    def edit(root: Path, _mp) -> None:
        path = root / "deployments" / "recipes" / "demo.yaml"
        text = path.read_text(encoding="utf-8")
        assert old in text
        path.write_text(text.replace(old, new, 1), encoding="utf-8")

    return edit


MUTATIONS = [
    Mutation("one source file's bytes (a row of openai.jsonl edited)",
             ("ingest[openai_sample]", "normalize[openai_sample]") + FROM_DEDUP, edit=_edit_source_row),
    Mutation("dedup parameter `dedup.near.threshold=0.95`", FROM_DEDUP, ("dedup.near.threshold=0.95",)),
    Mutation("toxicity threshold `filters.toxicity.threshold=0.3`", FROM_DEDUP[1:],
             ("filters.toxicity.threshold=0.3",)),
    Mutation("reward keep fraction `score.keep_top_fraction=0.7`", FROM_DEDUP[2:], ("score.keep_top_fraction=0.7",)),
    Mutation("mix shares `mix.shares.code=0.25`, `mix.shares.conversation=0.25`", FROM_DEDUP[3:],
             ("mix.shares.code=0.25", "mix.shares.conversation=0.25")),
    Mutation("training hyperparameter `train.learning_rate=0.001`", ("train", "evaluate"),
             ("train.learning_rate=0.001",)),
    Mutation("eval setting `eval.max_new_tokens=6`", ("evaluate",), ("eval.max_new_tokens=6",)),
    # Unkeyed: how a stage computes, not what it writes (a stage module's UNKEYED)
    Mutation("run-only settings `filters.toxicity.batch_size=8`, `score.batch_size=4`",
             (), ("filters.toxicity.batch_size=8", "score.batch_size=4")),
    # Another MinHash family (numpy: datasketch's hash and estimate; rensa, the default: its own
    # hash and exact Jaccard) is keyed; the same rows kept stop the re-run at dedup
    Mutation("dedup backend `dedup.near.backend=numpy` (same rows kept)", ("dedup",), ("dedup.near.backend=numpy",)),
    # Other shard files, the same rows (the mix artifact's data_hash): no retrain
    Mutation("shard size `mix.shard_rows=7` (same rows in other files)", ("mix",), ("mix.shard_rows=7",)),
    Mutation("stage code: tasks/filters.py edited (stricter length rule)", FROM_DEDUP[1:], edit=_edit_filter_code),
    Mutation("stage code: tasks/dedup.py refactored (same bytes out)", ("dedup",),
             edit=_code_edit("sftflow.tasks.dedup", '"""Dedup stage: drop', '"""The dedup stage: drop')),
    # A report is in no key: the next artifact a stage computes shows the new wording
    Mutation("report: the model card's wording edited (tasks/lib/model_card.py)", (),
             edit=_code_edit("sftflow.tasks.lib.model_card", "**This is a demonstration model.**",
                             "**This model is a demonstration.**")),
    # The stages that run the helper recompute (dedup's shingles, decontamination in filter and
    # evaluate, mix's eval-split prompts); each writes the same bytes, so score and train, which
    # read those outputs but do not run the helper, are hits
    Mutation("shared helper: tasks/lib/text_units.py edited (same bytes out)", ("dedup", "filter", "mix"),
             edit=_code_edit("sftflow.tasks.lib.text_units", "# One character each: CJK",
                             "# One unit per character: CJK")),
    # Sources and eval sets are read by the same reader: the filter (decontamination) and evaluate
    # keys hold it as well as ingest's. No run raised the message, so every output is the same
    Mutation("ingest error message edited (tasks/lib/readers.py, a SourceError no run raised)",
             ("ingest[alpaca_sample]", "ingest[sharegpt_sample]", "ingest[openai_sample]", "filter", "evaluate"),
             edit=_code_edit("sftflow.tasks.lib.readers", 'f"{where}: no such file")',
                             'f"{where}: no such file; check the path")')),
    Mutation("library version in the train key (trl upgraded)", ("train", "evaluate"), edit=_library_upgrade("trl")),
    Mutation("library version in the dedup key (rensa upgraded, same bytes out)", ("dedup",),
             edit=_library_upgrade("rensa")),
    Mutation("irrelevant: a comment added to the recipe", (),
             edit=_recipe_edit("name: demo\n", "# nightly run, reviewed by the data team\nname: demo\n")),
    Mutation("irrelevant: the run (recipe) name", (), edit=_recipe_edit("name: demo\n", "name: demo-nightly\n")),
    Mutation("irrelevant: nothing changed", ()),
]


def stage_names(summary: dict) -> list[str]:
    return [f"{s['stage']}[{s['label']}]" if s["label"] else s["stage"] for s in summary["stages"]]


def computed(summary: dict) -> set[str]:
    return {name for name, s in zip(stage_names(summary), summary["stages"]) if not s["cache_hit"]}


def render_matrix(rows: list[tuple[str, set[str]]]) -> str:
    lines = ["| single change | recomputed (in pipeline order) | cache hits |", "|---|---|---:|"]
    for change, redo in rows:
        recomputed = ", ".join(s for s in ALL if s in redo) or "nothing"
        lines.append(f"| {change} | {recomputed} | {len(ALL) - len(redo)} of {len(ALL)} |")
    return "\n".join(lines)


def test_mutation_matrix(completed_project, run_pipeline, assert_ledger_balances, small_train):
    project, baseline = completed_project  # a copy of one cold, complete run (conftest.completed_run)
    assert stage_names(baseline) == list(ALL)
    assert computed(baseline) == set(ALL)
    recipe = project / "deployments" / "recipes" / "demo.yaml"
    pristine_recipe = recipe.read_bytes()
    source = project / "data" / "samples" / "openai.jsonl"
    pristine_source = source.read_bytes()

    seen: list[tuple[str, set[str]]] = []
    timings = [f"{baseline['wall_seconds']:7.2f} s  baseline (cold)"]
    wrong: list[tuple[str, list[str], list[str]]] = []  # (change, recomputed, expected)
    misplanned: list[tuple[str, str, str, bool]] = []  # (change, stage, planned status, recomputed)
    for mutation in MUTATIONS:
        with pytest.MonkeyPatch.context() as mp:
            if mutation.edit:
                mutation.edit(project, mp)
            cache_keys.code_modules.cache_clear()
            overrides = small_train + list(mutation.overrides)
            # `sftflow plan` first: what it says is cached must be served, what it says computes must compute
            planned = plan_run(recipe, overrides, "all", root=project)
            # A change to the data runs to mix; train's and evaluate's keys are then known (they
            # hold mix's data hash), and the plan made after the run says for certain whether they
            # compute. The rows that reach no data stage train and evaluate for real.
            only = "data" if set(mutation.expected) - set(MODEL_STAGES) else "all"
            summary = run_pipeline(project, overrides, only=only)
            redo = computed(summary)
            if only == "data":
                after = {line["stage"]: line["status"] for line in plan_run(recipe, overrides, "all", root=project)["stages"]
                         if line["stage"] in MODEL_STAGES}
                assert set(after.values()) <= {CACHED, COMPUTES}, (mutation.change, after)
                redo |= {stage for stage, status in after.items() if status == COMPUTES}
        cache_keys.code_modules.cache_clear()
        recipe.write_bytes(pristine_recipe)
        source.write_bytes(pristine_source)
        seen.append((mutation.change, redo))
        timings.append(f"{summary['wall_seconds']:7.2f} s  {mutation.change} (--only {only})")
        if redo != set(mutation.expected):
            wrong.append((mutation.change, sorted(redo), sorted(mutation.expected)))
        plan = {input_name(line["stage"], line["label"]): line for line in planned["stages"]}
        assert list(plan)[: len(summary["stages"])] == stage_names(summary), mutation.change
        misplanned += [(mutation.change, name, line["status"], name in redo) for name, line in plan.items()
                       if (line["status"] == CACHED and name in redo) or (line["status"] == COMPUTES and name not in redo)]
        # a stage served after an input the plan could not know is one of the artifacts it named
        served = {name: s["key"] for name, s in zip(stage_names(summary), summary["stages"]) if s["cache_hit"]}
        misplanned += [(mutation.change, name, "served another artifact", False) for name, line in plan.items()
                       if name in served and line["status"] == IF_INPUT_CHANGES
                       and served[name] not in {key[:12] for key in line["reusable"]}]
        # every stage the run computed says why, in the summary and the catalog
        assert all(s["why"] for s in summary["stages"] if not s["cache_hit"]), mutation.change
        assert_ledger_balances(project, summary["run_id"])

    table = render_matrix(seen)
    out = REPO / "build" / "mutation-matrix.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table + "\n\nFlow wall time per run:\n\n" + "\n".join(timings) + "\n", encoding="utf-8")
    assert not wrong, "recomputed sets differ from the expected ones (change, recomputed, expected):\n" + \
        "\n".join(map(str, wrong))
    assert not misplanned, "sftflow plan said otherwise (change, stage, plan, recomputed):\n" + \
        "\n".join(map(str, misplanned))

    # with every change undone, the baseline's artifacts are all still served
    back = run_pipeline(project, small_train, only="all")
    assert computed(back) == set()
    assert [s["key"] for s in back["stages"]] == [s["key"] for s in baseline["stages"]]
    documented = re.search(re.escape(BEGIN) + r"\n(.*?)\n" + re.escape(END), DOC.read_text(encoding="utf-8"), re.S)
    assert documented, f"docs/caching.md lacks the {BEGIN} ... {END} block"
    assert documented.group(1).strip() == table, f"docs/caching.md's matrix is stale; paste {out}"
