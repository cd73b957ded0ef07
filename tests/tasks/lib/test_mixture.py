"""Mixture arithmetic: largest-remainder counts, target shares and rows, seeded copies."""

from __future__ import annotations

from collections import Counter

from sftflow.tasks.core.recipe_data import MixConfig
from sftflow.tasks.lib.mixture import apportion, sample_copies, target_counts, target_shares


def test_apportion_largest_remainder_sums_exactly():
    assert apportion({"code": 3.15, "conversation": 2.45, "qa": 1.4}, 7) == {"code": 3, "conversation": 3, "qa": 1}
    assert apportion({"a": 1, "b": 1, "c": 1}, 100) == {"a": 34, "b": 33, "c": 33}  # tie: by name
    assert apportion({"a": 0.0, "b": 0.0}, 5) == {"a": 0, "b": 0}


def test_target_shares_proportional_by_default_and_shares_when_given():
    assert target_shares({"qa": 60, "code": 40}, MixConfig()) == {"code": 0.4, "qa": 0.6}
    given = target_shares({"qa": 60, "code": 40}, MixConfig(shares={"qa": 0.7, "math": 0.3}))
    assert given == {"code": 0.0, "math": 0.3, "qa": 0.7}


def test_target_counts_from_tokens_uses_each_category_mean():
    shares = {"code": 0.5, "qa": 0.5}
    total, counts = target_counts(shares, {"code": 20, "qa": 20}, MixConfig(total_tokens=2000),
                                  {"code": 100.0, "qa": 50.0, "*": 75.0})
    assert (total, counts) == (30, {"code": 10, "qa": 20})


def test_sample_copies_full_copies_plus_remainder_without_replacement():
    copies = sample_copies(10, 25, seed=0, category="code")
    assert sum(copies) == 25
    assert Counter(copies) == {2: 5, 3: 5}
    assert sample_copies(10, 25, seed=0, category="code") == copies
    assert sample_copies(0, 5, seed=0, category="code") == []
