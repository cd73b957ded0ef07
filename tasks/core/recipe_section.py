"""The base of every recipe section model, and the turn roles that several sections name.

Every section is frozen and forbids unknown keys, so a typo in a recipe is an error that names the
field, never a silently ignored setting; `canonical()` is the JSON a section enters cache keys as.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

Role = Literal["system", "user", "assistant", "tool"]


class Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def canonical(self) -> dict[str, Any]:
        """The JSON form that enters cache keys."""
        return self.model_dump(mode="json")
