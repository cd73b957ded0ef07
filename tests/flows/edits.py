"""Edits a user makes between two runs, applied to a test project: a source row, a module's code.

A code edit changes a copy of the real source file and makes the code fingerprint read the copy
for that module (through `pytest.MonkeyPatch`, so it ends with the patch's context); an edit
that changes behaviour also patches the running function, since the pipeline imports the real
modules, not the copies. Callers clear `cache_keys`' memoized fingerprints around the run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sftflow.tasks.core import cache_keys


def _edit_source_row(root: Path, _mp) -> None:
    path = root / "data" / "samples" / "openai.jsonl"
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    # one row's answer gains a sentence: the file stays valid, one record's bytes change
    lines[0] = lines[0].replace('"}]}', ' This sentence was added by an editor."}]}', 1)
    assert lines[0] != path.read_text(encoding="utf-8").splitlines(keepends=True)[0]
    path.write_text("".join(lines), encoding="utf-8")


def _edit_module_file(root: Path, mp: pytest.MonkeyPatch, module: str, old: str, new: str) -> None:
    """Fingerprints read an edited copy of `module`'s real source file: `old` becomes `new` once."""
    real = cache_keys._module_file
    path = real(module)
    assert path is not None, f"{module} has no source file: update this row"
    text = path.read_text(encoding="utf-8")
    assert text.count(old) == 1, f"{path} holds {old!r} {text.count(old)} times, not once: update this row's edit"
    copy = root.parent / "edited-code" / module / path.name  # beside the project, not in it
    copy.parent.mkdir(parents=True, exist_ok=True)
    copy.write_text(text.replace(old, new, 1), encoding="utf-8")
    mp.setattr(cache_keys, "_module_file", lambda name: copy if name == module else real(name))


def _edit_filter_code(root: Path, mp: pytest.MonkeyPatch) -> None:
    """An edit to tasks/filters.py that changes behaviour: responses need 3x the tokens."""
    import sftflow.tasks.filters as filters
    from sftflow.tasks.core.reasons import Reason

    _edit_module_file(root, mp, "sftflow.tasks.filters",
                      "    if n_tokens_response < cfg.length.min_response_tokens:\n",
                      "    if n_tokens_response < cfg.length.min_response_tokens * 3:\n")
    real_decide = filters.decide

    def stricter(n_tokens_response, n_tokens_total, judged_toxicity, decon_hits, cfg):
        if n_tokens_response < cfg.length.min_response_tokens * 3:
            return Reason.TOO_SHORT_RESPONSE
        return real_decide(n_tokens_response, n_tokens_total, judged_toxicity, decon_hits, cfg)

    mp.setattr(filters, "decide", stricter)
