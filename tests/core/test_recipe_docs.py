from pathlib import Path

from sftflow.tasks.core.recipe_docs import render

DOCS = Path(__file__).resolve().parents[2] / "docs" / "recipes.md"


def test_recipe_reference_is_current():
    assert DOCS.read_text(encoding="utf-8") == render(), (
        "docs/recipes.md is stale: run `python -m sftflow.tasks.core.recipe_docs > docs/recipes.md`"
    )


def test_every_section_is_documented():
    text = render()
    for section in ("`sources[]`", "`dedup.near`", "`filters.toxicity`", "`filters.decontaminate`",
                    "`score`", "`mix`", "`train`"):
        assert section in text, section
