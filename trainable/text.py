"""Bounded quoting of user values in error messages (docs/reliability.md, "Bounded messages").

A message quotes what the user wrote so they can find it, but a value can be huge (a YAML
alias bomb expands a few hundred bytes into gigabytes; a 300-character name): every quoted
value goes through :func:`quote`, which bounds the work (``reprlib``) and the length.
"""
from __future__ import annotations

import reprlib
from typing import Any

QUOTE_LIMIT = 80

_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxdict, _repr.maxlist, _repr.maxtuple, _repr.maxset = 3, 6, 8, 8, 6
_repr.maxstring, _repr.maxother, _repr.maxlong = QUOTE_LIMIT, QUOTE_LIMIT, 40


def shorten(text: str, limit: int = QUOTE_LIMIT) -> str:
    """`text` cut to `limit` characters, saying how long it was."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"


def quote(value: Any, limit: int = QUOTE_LIMIT) -> str:
    """repr(value) bounded in time and length: nested containers are elided (reprlib) and the
    result is cut to `limit` characters."""
    if isinstance(value, str):
        return repr(value) if len(value) <= limit else f"{value[:limit]!r}… ({len(value)} characters)"
    text = _repr.repr(value)
    return text if len(text) <= limit else text[:limit] + "…"
