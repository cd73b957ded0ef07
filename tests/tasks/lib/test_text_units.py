"""text_units against a character-by-character reference, on text mixing every kind of script."""

import re

from hypothesis import given, settings
from hypothesis import strategies as st

from sftflow.tasks.lib.text_units import _UNSPACED_CHAR, text_units

WORD_CHAR = re.compile(r"\w")


def reference_units(text: str) -> list[str]:
    """One unit per unspaced-script character; maximal runs of other word characters."""
    units: list[str] = []
    run = ""
    for char in text.lower():
        if _UNSPACED_CHAR.fullmatch(char):
            units += [run, char] if run else [char]
            run = ""
        elif WORD_CHAR.fullmatch(char):
            run += char
        elif run:
            units.append(run)
            run = ""
    return units + ([run] if run else [])


MIXED = st.text(alphabet=st.sampled_from(
    [chr(c) for c in [*range(0x20, 0x250), *range(0x3040, 0x30A0, 7), *range(0x4E00, 0x4E40),
                      *range(0x0E00, 0x0E60, 3), *range(0xAC00, 0xAC10), 0x3002, 0xFF0C, 0x1F600]]), max_size=60)


@settings(max_examples=400, deadline=None)
@given(MIXED)
def test_text_units_match_the_reference(text):
    assert text_units(text) == reference_units(text)


def test_chinese_is_split_by_character_and_english_by_word():
    assert text_units("写一首诗, Write a POEM!") == ["写", "一", "首", "诗", "write", "a", "poem"]
    assert text_units("한국어 문장") == ["한국어", "문장"]  # Hangul is written with spaces
