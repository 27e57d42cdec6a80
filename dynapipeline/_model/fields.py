"""Keyword checking for the pydantic models users build (components, handlers): no unknown field passes silently."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel

from dynapipeline.errors import ConfigurationError

__all__ = ["reject_unknown_fields"]


def reject_unknown_fields(cls: type[BaseModel], data: Any, label: str) -> None:
    """Raise ``ConfigurationError`` naming each keyword in ``data`` that is no field of ``cls``.

    Each unknown keyword is named with the closest known field (``did you mean
    'retries'?``), or with the list of known fields when none is close. A model
    whose config says ``extra="allow"`` keeps its extra keywords. ``label`` names the
    object in the message (``Stage 'a'``).
    """
    if not isinstance(data, dict) or cls.model_config.get("extra") == "allow":
        return
    known = _known_fields(cls)
    unknown = [key for key in data if key not in known]
    if not unknown:
        return
    problems = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), sorted(known), n=1)
        if close:
            problems.append(f"unknown field {key!r} (did you mean {close[0]!r}?)")
        else:
            problems.append(f"unknown field {key!r}; known fields: {', '.join(sorted(known))}")
    raise ConfigurationError(f"{label}: {'; '.join(problems)}")


def _known_fields(cls: type[BaseModel]) -> set[str]:
    """Names a keyword may use for a field of ``cls``: the field's name and its aliases."""
    known: set[str] = set()
    for name, info in cls.model_fields.items():
        known.add(name)
        if info.alias:
            known.add(info.alias)
        aliases = info.validation_alias
        if isinstance(aliases, str):
            known.add(aliases)
        elif aliases is not None and hasattr(aliases, "choices"):  # AliasChoices: plain names among them
            known.update(choice for choice in aliases.choices if isinstance(choice, str))
    return known
