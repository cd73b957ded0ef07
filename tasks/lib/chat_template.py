"""Chat templates for training: the built-in ChatML template, template selection, end-of-turn token.

Assistant-only loss (TRL's `assistant_only_loss=True`) takes its mask from the template's
`{% generation %}...{% endgeneration %}` blocks: whatever renders inside one is supervised,
everything else is not. A template without those markers yields an all-zero mask, so a model
whose own template lacks them is refused unless the recipe names a template that has them. A
template the recipe names is always the one used: it is an explicit choice, so it also replaces a
tokenizer template that has markers, and the origin string says so.

The built-in template puts the assistant's closing `<|im_end|>` inside the block, so the model is
trained to end its turn; the newline after it stays outside (it is the separator the next turn's
header starts after, never something the model must produce).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

from sftflow.tasks.lib.chat_tokens import END_OF_TURN_CANDIDATES

CHATML_ROLES = ("system", "user", "assistant", "tool")
# Appended to the origin when the recipe's template replaces a different one the tokenizer had.
OVERRIDE_NOTE = " (overrides the tokenizer's own template)"

# Same pattern transformers uses to decide whether masks can be produced (trim variants included).
_GENERATION_MARKER = re.compile(r"\{%-?\s*generation\s*-?%\}")

CHATML_TEMPLATE = (
    "{%- for message in messages -%}\n"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] -%}\n"
    "{{- raise_exception('ChatML: unknown role ' ~ message['role'] ~ '; expected system, user, assistant or tool') -}}\n"
    "{%- endif -%}\n"
    "{%- if message['role'] == 'assistant' -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- generation -%}\n"
    "{{- message['content'] ~ '<|im_end|>' -}}\n"
    "{%- endgeneration -%}\n"
    "{{- '\\n' -}}\n"
    "{%- else -%}\n"
    "{{- '<|im_start|>' ~ message['role'] ~ '\\n' ~ message['content'] ~ '<|im_end|>\\n' -}}\n"
    "{%- endif -%}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "{{- '<|im_start|>assistant\\n' -}}\n"
    "{%- endif -%}\n"
)


class ChatTemplateError(ValueError):
    """No usable training template, or one whose end-of-turn token cannot be found."""


def has_generation_markers(template: str | dict | None) -> bool:
    """Whether the template has `{% generation %}` blocks (a dict of named templates: its default).

    >>> has_generation_markers("{%- generation -%}{{ m }}{%- endgeneration -%}")
    True
    >>> has_generation_markers("{{ messages }}"), has_generation_markers(None)
    (False, False)
    """
    if isinstance(template, dict):
        template = template.get("default")
    if not template:
        return False
    return _GENERATION_MARKER.search(template) is not None


def _is_single_token(tokenizer: Any, token: str) -> bool:
    return len(tokenizer.encode(token, add_special_tokens=False)) == 1


def select_chat_template(
    tokenizer, recipe_template: str | None, resolve: Callable[[str], Path]
) -> tuple[str, str]:
    """(template text, origin) for training.

    The recipe's `train.chat_template` wins when set: `chatml` for the built-in template
    (origin `builtin:chatml`) or a .jinja file resolved with `resolve`, i.e. confined to allowed
    roots (origin `file:<name>`). When the tokenizer has a different template of its own, the
    origin gets OVERRIDE_NOTE appended, so training_config and the model card record that the
    model's own format was replaced. Without a recipe template, the tokenizer's own template is
    used when it has generation markers (origin `tokenizer`); otherwise ChatTemplateError.
    """
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default")
    if recipe_template is not None and recipe_template.strip():
        text, origin = _recipe_template(tokenizer, recipe_template, resolve)
        # An identical template replaces nothing (the builtin tiny model ships CHATML_TEMPLATE).
        return text, (origin + OVERRIDE_NOTE if own and own != text else origin)
    if has_generation_markers(own):
        return own, "tokenizer"
    model_name = getattr(tokenizer, "name_or_path", "") or "the model"
    why = "has no chat template" if not own else "has a chat template without {% generation %} markers"
    raise ChatTemplateError(
        f"the tokenizer of {model_name} {why}, so assistant-only loss would supervise nothing: "
        "set train.chat_template: chatml (the built-in ChatML template) or a path to a .jinja "
        "template whose assistant turns are wrapped in {% generation %}...{% endgeneration %}"
    )


def _recipe_template(tokenizer, recipe_template: str, resolve: Callable[[str], Path]) -> tuple[str, str]:
    """(text, origin) of the template the recipe names; ChatTemplateError when it cannot be used."""
    if recipe_template.strip().lower() == "chatml":
        missing = [t for t in ("<|im_start|>", "<|im_end|>") if not _is_single_token(tokenizer, t)]
        if missing:
            # Without them ChatML's markers become ordinary text split into pieces, and the model
            # never sees a real end-of-turn token to stop on.
            raise ChatTemplateError(
                f"train.chat_template: chatml needs {' and '.join(missing)} as tokens of the model's "
                "vocabulary, and this tokenizer splits them: give a .jinja template built on the model's "
                "own special tokens, with the assistant turn and its end-of-turn token in "
                "{% generation %}...{% endgeneration %}"
            )
        return CHATML_TEMPLATE, "builtin:chatml"
    path = Path(resolve(recipe_template))
    if path.suffix != ".jinja":
        raise ChatTemplateError(
            f"train.chat_template {recipe_template!r} is neither 'chatml' nor a .jinja file: "
            "give 'chatml' or the path of a .jinja template"
        )
    if not path.is_file():
        raise ChatTemplateError(
            f"train.chat_template {recipe_template!r}: no file at {path}; fix the path (relative to "
            "the project root) or use 'chatml'"
        )
    text = path.read_text(encoding="utf-8")
    if not has_generation_markers(text):
        raise ChatTemplateError(
            f"train.chat_template {path}: the template has no {{% generation %}} markers, so "
            "assistant-only loss would supervise nothing; wrap each assistant turn's content and "
            "its end-of-turn token in {% generation %}...{% endgeneration %}, or use 'chatml'"
        )
    return text, f"file:{path.name}"


def end_of_turn_token(template: str, tokenizer) -> str:
    """The token that ends an assistant turn under `template` (what generation must stop on).

    A known end-of-turn literal written in the template and present in the vocabulary wins;
    otherwise the tokenizer's eos token when the template emits it (`eos_token` variable or its text).
    """
    vocab = tokenizer.get_vocab()
    for candidate in END_OF_TURN_CANDIDATES:
        if candidate in template and candidate in vocab:
            return candidate
    eos = getattr(tokenizer, "eos_token", None)
    if eos and (eos in template or re.search(r"\beos_token\b", template)):
        return eos
    raise ChatTemplateError(
        f"cannot tell which token ends an assistant turn: the template writes none of "
        f"{', '.join(END_OF_TURN_CANDIDATES)} (present in the vocabulary) nor the eos token "
        f"{eos!r}; use a template that ends assistant turns with one of them, or 'chatml'"
    )
