"""Eval set files as decontamination and evaluation read them: rows read by the sources' readers
(tasks/lib/readers.py), so eval sets accept the files sources accept, and each row's texts by the
eval set's format, with prompts told apart by the sources' role tables (tasks/lib/formats.py).

Unlike a source row, an eval row that does not parse stops the run (`EvalSetError`) with the file
and line to fix: a skipped eval row would let its copies into the training data unnoticed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterator

from sftflow.tasks.lib.formats import OPENAI_ROLES, SHAREGPT_ROLES
from sftflow.tasks.lib.readers import iter_file_rows
from sftflow.tasks.lib.rows import RawRow, SourceError


class EvalSetError(ValueError):
    """An eval set file that cannot be read; the message names the file, row and field."""


def _row_place(path: Path, row: RawRow) -> str:
    """"e.jsonl:41", "e.json:41 (index 7)" or "e.parquet (index 7)": where to look in the file."""
    if row.line is None:
        return f"{path} ({row.location})"
    if row.location == f"line {row.line}":
        return f"{path}:{row.line}"
    return f"{path}:{row.line} (index {row.source_row})"


def read_eval_rows(path: Path, where: str, shown_as: str | None = None) -> Iterator[tuple[str, Any]]:
    """(place, row) pairs, read by the sources' file readers so eval sets accept the files sources accept.

    `place` names the file as `shown_as` (e.g. the recipe's relative path, so decisions do not
    depend on where the project is checked out); errors name the resolved path.

    An eval set is a curated input: a row that does not parse stops the run instead of being
    skipped, since a skipped eval row would let its copies into the training data unnoticed.
    """
    try:
        for row in iter_file_rows(path, where):
            if row.problem is not None:
                raise EvalSetError(f"{_row_place(path, row)}: {row.problem.message}; fix the eval set file there")
            yield _row_place(Path(shown_as) if shown_as else path, row), row.value
    except SourceError as exc:  # the whole file is unreadable
        raise EvalSetError(str(exc)) from None


def _field(row: Any, name: str, where: str, required: bool = True) -> Any:
    if not isinstance(row, dict):
        raise EvalSetError(f"{where}: expected an object, found {type(row).__name__}")
    if row.get(name) is None and required:
        raise EvalSetError(f"{where}: missing field {name!r}")
    return row.get(name)


def _text(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # OpenAI content parts: keep the text parts
        return "\n".join(p.get("text", "") for p in value if isinstance(p, dict) and isinstance(p.get("text"), str))
    raise EvalSetError(f"{where}: expected text, found {type(value).__name__}")


def eval_row_parts(row: Any, fmt: str, where: str) -> list[tuple[str, bool]]:
    """(text, is_prompt) for each text of one eval row; prompts short of n units match whole.

    >>> eval_row_parts({"instruction": "Add.", "input": "2+2", "output": "4"}, "alpaca", "e:1")
    [('Add.', False), ('2+2', False), ('4', False), ('Add.\\n\\n2+2', True)]
    """
    if fmt == "text":
        return [(_text(_field(row, "text", where), f"{where}.text"), True)]
    if fmt == "alpaca":
        instruction = _text(_field(row, "instruction", where), f"{where}.instruction")
        extra = {name: _field(row, name, where, required=False) for name in ("input", "output")}
        # With an input, the instruction alone is usually shared by many items ("Classify the
        # sentiment."): only instruction + input, as training rows carry it, is the whole prompt.
        parts = [(instruction, not extra["input"])]
        parts += [(_text(v, f"{where}.{k}"), False) for k, v in extra.items() if v]
        if extra["input"]:
            # Training rows carry instruction and input in one user turn; n-grams spanning the
            # two would be missed if only the separate fields counted.
            parts.append((f"{instruction}\n\n{_text(extra['input'], f'{where}.input')}", True))
        return parts
    if fmt == "sharegpt":
        turns = _field(row, "conversations", where)
        return [(_text(_field(t, "value", f"{where}.conversations[{i}]"), f"{where}.conversations[{i}].value"),
                 isinstance(t, dict) and SHAREGPT_ROLES.get(str(t.get("from"))) == "user")
                for i, t in enumerate(turns)]
    if fmt == "openai":
        messages = _field(row, "messages", where)
        return [(_text(_field(m, "content", f"{where}.messages[{i}]", required=False) or "", f"{where}.messages[{i}]"),
                 isinstance(m, dict) and OPENAI_ROLES.get(str(m.get("role"))) == "user")
                for i, m in enumerate(messages)]
    raise EvalSetError(f"{where}: unknown eval set format {fmt!r}")


def eval_row_texts(row: Any, fmt: str, where: str) -> list[str]:
    """The texts of one eval row whose n-grams count as the eval set's content."""
    return [text for text, _ in eval_row_parts(row, fmt, where)]
