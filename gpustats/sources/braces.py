"""Brace patterns for shard lists, expanded by gpustats itself (no shell needed, as WebDataset does).

``{a,b,c}`` gives each alternative; ``{0..9}`` an inclusive integer range (``{9..0}`` counts down,
``{0..99..10}`` steps); ``{000000..001023}`` keeps the zero padding (the width of the wider end
when either end starts with ``0``). Braces nest (``{train,val}-{0..1}``). Braces that are neither
(``{x}``, ``{}``) stay as they are, and so do letter ranges (``{a..c}``: :func:`letter_range` finds
them, so that a missing path can say so). At most :data:`MAX_EXPANSION` names and
:data:`MAX_NESTING` levels of nesting.

>>> expand_braces("shard-{000008..000011}.tar")
['shard-000008.tar', 'shard-000009.tar', 'shard-000010.tar', 'shard-000011.tar']
>>> expand_braces("{train,val}-{0..1}.tar")
['train-0.tar', 'train-1.tar', 'val-0.tar', 'val-1.tar']
>>> expand_braces("a{x}b")
['a{x}b']
"""

from __future__ import annotations

import re

from .errors import SourceError

__all__ = ["MAX_EXPANSION", "MAX_NESTING", "expand_braces", "has_braces", "letter_range"]

#: the most names one pattern may expand to
MAX_EXPANSION = 1_000_000
#: the deepest nesting of brace groups expanded (``{a,{b,{c,d}}}`` is 3 deep)
MAX_NESTING = 32
_RANGE = re.compile(r"(-?\d+)\.\.(-?\d+)(?:\.\.(-?\d+))?")


def has_braces(text: str) -> bool:
    """True when ``text`` holds a ``{...}`` group (a candidate pattern)."""
    start = text.find("{")
    return start >= 0 and text.find("}", start) > start


def expand_braces(pattern: str) -> list[str]:
    """Every name ``pattern`` stands for, in order; :class:`SourceError` beyond :data:`MAX_EXPANSION`."""
    out = _expand(pattern)
    if len(out) > MAX_EXPANSION:
        raise SourceError(f"the pattern {_shown(pattern)} expands to {len(out)} names (more than {MAX_EXPANSION})")
    return out


def _shown(text: str) -> str:
    return repr(text) if len(text) <= 120 else repr(text[:100]) + f"... ({len(text)} characters)"


def _group_end(text: str, start: int) -> int:
    depth = 0
    for i in range(start, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return i
    return -1


def _split_top(body: str) -> list[str]:
    parts, depth, last = [], 0, 0
    for i, c in enumerate(body):
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif c == "," and depth == 0:
            parts.append(body[last:i])
            last = i + 1
    return parts + [body[last:]]


def _range(body: str) -> list[str] | None:
    match = _RANGE.fullmatch(body)
    if match is None:
        return None
    first, last = int(match.group(1)), int(match.group(2))
    step = abs(int(match.group(3) or 1)) or 1
    count = abs(last - first) // step + 1
    if count > MAX_EXPANSION:
        raise SourceError(f"the range {{{body}}} has {count} values (more than {MAX_EXPANSION})")
    padded = any(re.fullmatch(r"-?0\d+", end) for end in match.group(1, 2))
    width = max(len(match.group(1)), len(match.group(2))) if padded else 0
    values = range(first, last + 1, step) if first <= last else range(first, last - 1, -step)
    return [f"{v:0{width}d}" for v in values]


def _expand(text: str, depth: int = 0) -> list[str]:
    """The names of ``text``: its groups left to right (a loop), nested groups by recursion (depth-limited)."""
    if depth > MAX_NESTING:
        raise SourceError(f"brace groups nested more than {MAX_NESTING} levels deep; refused")
    out, pos, start = [""], 0, text.find("{")
    while start >= 0:
        end = _group_end(text, start)
        if end < 0:
            break
        body = text[start + 1:end]
        parts = _split_top(body)
        options = [x for part in parts for x in _expand(part, depth + 1)] if len(parts) > 1 else _range(body)
        if options is None:  # a literal brace: look further
            start = text.find("{", start + 1)
            continue
        if len(out) * len(options) > MAX_EXPANSION:
            raise SourceError(f"the pattern {_shown(text)} expands to more than {MAX_EXPANSION} names")
        head = text[pos:start]
        out = [done + head + option for done in out for option in options]
        pos = end + 1
        start = text.find("{", pos)
    return [done + text[pos:] for done in out]


_LETTERS = re.compile(r"\{([^{},.\d])\.\.([^{},.\d])(?:\.\.-?\d+)?\}")


def letter_range(text: str) -> str | None:
    """The first ``{a..c}``-style group of ``text`` (letters, not expanded), or None.

    >>> letter_range("img-{a..c}.png"), letter_range("img-{0..2}.png")
    ('{a..c}', None)
    """
    match = _LETTERS.search(text)
    return None if match is None else match.group(0)
