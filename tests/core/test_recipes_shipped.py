from pathlib import Path

import pytest

from sftflow.tasks.core.recipe import load_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "deployments" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_shipped_recipes_validate(path):
    recipe = load_recipe(path)
    assert recipe.sources


def test_real_recipe_names_hub_models():
    recipe = load_recipe(next(p for p in RECIPES if p.stem == "smollm2-135m"))
    assert recipe.train.model == "HuggingFaceTB/SmolLM2-135M"
    assert recipe.filters.toxicity.backend == "detoxify" and recipe.score.backend == "reward-model"
