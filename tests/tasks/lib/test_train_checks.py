"""Row sampling for the train stage's checks (the round trip itself runs in tests/tasks/test_train.py)."""

from __future__ import annotations

from sftflow.tasks.lib.train_checks import sample_rows


def test_roundtrip_sample_counts_copies_once_and_is_order_independent():
    rows = [{"example_id": f"e{i % 30}", "messages": []} for i in range(90)]
    sample = sample_rows(rows, 32, seed=0, salt="s")
    assert len(sample) == 30 and len({r["example_id"] for r in sample}) == 30
    reversed_sample = sample_rows(list(reversed(rows)), 20, seed=0, salt="s")
    assert [r["example_id"] for r in reversed_sample] == [r["example_id"] for r in sample_rows(rows, 20, 0, "s")]
