import pytest

from sftflow.tasks.core.recipe import RecipeError, apply_override, load_recipe, parse_recipe

MINIMAL = {"name": "x", "sources": [{"name": "a", "path": "a.json", "format": "alpaca"}]}


def test_minimal_recipe_gets_documented_defaults():
    recipe = parse_recipe(MINIMAL)
    assert recipe.dedup.near.threshold == 0.8 and recipe.dedup.near.lsh_params == (13, 7)
    assert recipe.filters.length.min_response_tokens == 10
    assert recipe.filters.decontaminate.ngram == 13
    assert recipe.score.keep_top_fraction == 0.8
    assert recipe.mix.eval_fraction == 0.05


def test_unknown_key_names_the_field():
    with pytest.raises(RecipeError, match=r"filters\.toxicity\.treshold"):
        parse_recipe({**MINIMAL, "filters": {"toxicity": {"treshold": 0.3}}})


def test_shares_must_sum_to_one():
    with pytest.raises(RecipeError, match="sum to 1"):
        parse_recipe({**MINIMAL, "mix": {"shares": {"qa": 0.5, "code": 0.4}}})


def test_duplicate_source_names_refused():
    src = MINIMAL["sources"][0]
    with pytest.raises(RecipeError, match="unique"):
        parse_recipe({"name": "x", "sources": [src, src]})


def test_source_needs_exactly_one_location():
    with pytest.raises(RecipeError, match="exactly one"):
        parse_recipe({"name": "x", "sources": [{"name": "a", "format": "alpaca"}]})


def test_bands_times_rows_cannot_exceed_permutations():
    with pytest.raises(RecipeError, match="bands\\*rows"):
        parse_recipe({**MINIMAL, "dedup": {"near": {"num_perm": 64, "bands": 16, "rows": 8}}})


def test_override_parses_yaml_values_and_changes_hash(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\nsources:\n  - {name: a, path: a.json, format: alpaca}\n")
    base = load_recipe(path)
    changed = load_recipe(path, ["filters.toxicity.threshold=0.3", "mix.shares={qa: 1.0}"])
    assert changed.filters.toxicity.threshold == 0.3
    assert changed.mix.shares == {"qa": 1.0}
    assert base.recipe_hash() != changed.recipe_hash()
    assert load_recipe(path).recipe_hash() == base.recipe_hash()


def test_comment_in_recipe_does_not_change_hash(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("name: x\nsources:\n  - {name: a, path: a.json, format: alpaca}\n")
    b.write_text("# a comment\nname: x\nsources:\n  - {name: a, path: a.json, format: alpaca}  # here\n")
    assert load_recipe(a).recipe_hash() == load_recipe(b).recipe_hash()


def test_bad_override_is_actionable():
    with pytest.raises(RecipeError, match="dotted.key=value"):
        apply_override({}, "no-equals-sign")
    with pytest.raises(RecipeError, match="not an index"):
        apply_override({"sources": [{}]}, "sources.3.name=x")


def test_missing_recipe_file(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.mark.parametrize("revision", [None, "main", "v1.0", COMMIT[:12], COMMIT.upper(), COMMIT + "0"])
def test_remote_code_without_a_pinned_commit_is_refused(tmp_path, revision):
    train = {"model": "org/model", "trust_remote_code": True, **({"revision": revision} if revision else {})}
    with pytest.raises(RecipeError, match=r"train: .*trust_remote_code runs code .*40-character commit hash"):
        parse_recipe({**MINIMAL, "train": train})
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: x\nsources: [{name: a, path: a.json, format: alpaca}]\ntrain: {model: org/model}\n")
    overrides = ["train.trust_remote_code=true"] + ([f"train.revision={revision}"] if revision else [])
    with pytest.raises(RecipeError, match=rf"{recipe}: invalid recipe: train: .*trust_remote_code"):
        load_recipe(recipe, overrides)


def test_remote_code_is_off_by_default_and_allowed_with_a_commit():
    assert parse_recipe(MINIMAL).train.trust_remote_code is False
    pinned = parse_recipe({**MINIMAL, "train": {"model": "org/model", "trust_remote_code": True, "revision": COMMIT}})
    assert pinned.train.trust_remote_code and pinned.train.revision == COMMIT


# ------------------------------------------------------------- mix.shares names (issue 13) --
def test_misspelled_share_category_with_auto_sources_fails_naming_mix_shares_and_the_name():
    with pytest.raises(RecipeError, match=r"mix\.shares names 'cdoe', which no source can produce.*code"):
        parse_recipe({**MINIMAL, "mix": {"shares": {"qa": 0.5, "cdoe": 0.5}}})
    assert parse_recipe({**MINIMAL, "mix": {"shares": {"qa": 0.5, "code": 0.5}}}).mix.shares == {"qa": 0.5, "code": 0.5}


def test_share_names_with_fixed_categories_must_be_one_of_theirs():
    sources = [{"name": "a", "path": "a.json", "format": "alpaca", "category": "legal"},
               {"name": "b", "path": "b.json", "format": "alpaca", "category": "medical"}]
    ok = parse_recipe({"name": "x", "sources": sources, "mix": {"shares": {"legal": 0.5, "medical": 0.5}}})
    assert ok.mix.shares == {"legal": 0.5, "medical": 0.5}
    with pytest.raises(RecipeError, match=r"mix\.shares names 'qa', which no source can produce; the sources' "
                                          r"categories are legal, medical"):
        parse_recipe({"name": "x", "sources": sources, "mix": {"shares": {"legal": 0.5, "qa": 0.5}}})
    mixed = [sources[0], {"name": "c", "path": "c.json", "format": "alpaca"}]  # fixed + auto
    assert parse_recipe({"name": "x", "sources": mixed, "mix": {"shares": {"legal": 0.5, "math": 0.5}}})


def test_short_category_policy_defaults_to_scale_down_and_is_a_closed_choice():
    assert parse_recipe(MINIMAL).mix.short_category == "scale_down"
    with pytest.raises(RecipeError, match=r"mix\.short_category"):
        parse_recipe({**MINIMAL, "mix": {"short_category": "shrink"}})


def test_source_priority_must_name_a_source():
    with pytest.raises(RecipeError, match=r"dedup\.source_priority names 'b'"):
        parse_recipe({**MINIMAL, "dedup": {"source_priority": ["a", "b"]}})
    assert parse_recipe({**MINIMAL, "dedup": {"source_priority": ["a"]}}).dedup.source_priority == ["a"]
