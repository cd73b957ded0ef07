"""Write docs/recipes.md from the recipe models, so the field reference never drifts from code.

    python -m sftflow.tasks.core.recipe_docs > docs/recipes.md
"""

from __future__ import annotations

import json
import re
import typing

from pydantic import BaseModel
from pydantic_core import PydanticUndefined

from sftflow.tasks.core.recipe import Recipe, SourceConfig

HEADER = """# Recipe reference

Generated from `tasks/core/recipe*.py` by `python -m sftflow.tasks.core.recipe_docs` (a test checks it is
current). Every section is optional except `name` and `sources`; unknown keys are errors.
Override any value on the command line with `--set dotted.key=value` (the value is parsed as
YAML; list items by index: `--set sources.0.path=data/other.jsonl`).
"""


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
        return json.dumps(value.model_dump(mode="json") if isinstance(value, BaseModel) else value)
    if field.default is PydanticUndefined:
        return "required"
    return json.dumps(field.default)


def _type(annotation) -> str:
    # The recipe's own models by their class name: the reference is for recipe authors. They are
    # defined in recipe.py and its recipe_<part>.py section modules.
    text = re.sub(rf"{re.escape(__package__)}\.recipe(_[a-z]+)?\.", "", str(annotation).replace("typing.", ""))
    return text.replace("<class '", "").replace("'>", "")


def _section(model: type[BaseModel], prefix: str, out: list[str]) -> None:
    nested: list[tuple[str, type[BaseModel]]] = []
    rows = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        inner = typing.get_args(annotation)
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            nested.append((f"{prefix}{name}", annotation))
            continue
        if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel) and inner[0] is not SourceConfig:
            nested.append((f"{prefix}{name}[]", inner[0]))
        doc = (field.description or "").replace("|", "\\|").replace("\n", " ")
        rows.append(f"| `{name}` | `{_type(annotation)}` | `{_default(field)}` | {doc} |")
    if rows:
        title = prefix.rstrip(".") or "top level"
        out += [f"\n## `{title}`\n", (model.__doc__ or "").strip().split("\n")[0], "",
                "| field | type | default | meaning |", "|---|---|---|---|", *rows]
    for path, sub in nested:
        _section(sub, f"{path}.", out)


def render() -> str:
    out = [HEADER]
    _section(Recipe, "", out)
    _section(SourceConfig, "sources[].", out)
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(render(), end="")
