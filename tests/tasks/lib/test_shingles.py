"""Shingles: text units cut into n-grams, by characters for scripts written without spaces."""

from __future__ import annotations

from sftflow.tasks.lib.shingles import shingles


def test_chinese_rows_are_shingled_by_characters():
    grams = shingles("请写一首关于春天的诗。", 5, n_unspaced=3)
    assert len(grams) == 8  # 10 characters, 3-character shingles
    assert shingles("请写一首关于春天的诗。", 5) and len(shingles("请写一首关于春天的诗。", 5)) == 6
    # a mostly English row keeps word shingles even with a Chinese name in it
    assert shingles("please translate the word 春 into english now", 5, 3)[0] == b"please translate the word \xe6\x98\xa5"
