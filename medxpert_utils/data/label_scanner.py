"""Fast matching of the labeler's phrase patterns: each pattern is tried only at the words that can start it.

Python's ``re`` tries every alternative of a phrase table at every position, which made the tables the labeler's
bottleneck. :class:`PhraseScanner` reads, from each parsed pattern, the lowercase first letters its matches can
start with, looks up the first letters of each word of the text against them, and tries a pattern only there; one
pass over the words serves every pattern. A pattern whose starts cannot be read is scanned everywhere.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any


class PhraseScanner:
    """Case-insensitive patterns, each tried only at the words that can start one of its matches (read from the
    parsed pattern by :func:`_start_keys`); ``scan`` gives the same matches as ``finditer`` per pattern."""

    def __init__(self, patterns: Iterable[str]) -> None:
        patterns = list(patterns)
        self.regexes = [re.compile(pattern, re.IGNORECASE) for pattern in patterns]
        self.keys = [_start_keys(pattern) for pattern in patterns]
        self._candidates: dict[str, tuple[int, ...]] = {}  # word start -> patterns to try (<= 4 letters)

    def scan(self, text: str, skip: Iterable[int] = ()) -> list[list[re.Match[str]]]:
        """Per pattern, its non-overlapping matches left to right (as ``finditer``); ``skip``: pattern indexes."""
        skip = set(skip)
        found: list[list[re.Match[str]]] = [[] for _ in self.regexes]
        ends = [0] * len(self.regexes)
        for i, keys in enumerate(self.keys):
            if keys is None and i not in skip:
                found[i] = list(self.regexes[i].finditer(text))
        for word in _WORD_START.finditer(text):
            key = word.group().lower()
            ids = self._candidates.get(key)
            if ids is None:
                ids = self._candidates[key] = tuple(
                    i for i, keys in enumerate(self.keys)
                    if keys is not None and any(key[:j] in keys for j in range(1, len(key) + 1)))
            position = word.start()
            for i in ids:
                if position >= ends[i] and i not in skip:
                    match = self.regexes[i].match(text, position)
                    if match:
                        ends[i] = match.end()
                        found[i].append(match)
        return found


_WORD_START = re.compile(r"(?<![A-Za-z])[A-Za-z]{1,4}|[?;]")


def _start_keys(pattern: str, n: int = 4) -> frozenset[str] | None:
    """The lowercase first ``n`` letters any match can start with (a superset), or None if unknown."""
    try:
        from re import _constants, _parser  # Python >= 3.11; elsewhere every position is scanned
        states = _extend({("", False)}, _parser.parse(pattern, re.IGNORECASE), n, _constants)
    except Exception:  # noqa: BLE001 - an unexpected parse tree only costs speed
        return None
    if states is None or any(prefix == "" for prefix, _ in states):
        return None
    return frozenset(prefix for prefix, _ in states)


def _extend(states: set, items: Any, n: int, c: Any) -> set | None:
    """Extend (prefix, closed) states over the parsed items; a non-letter closes a prefix."""
    for op, av in items:
        open_ = {s for s in states if not s[1] and len(s[0]) < n}
        if not open_:
            return states
        if op is c.LITERAL:
            new: set | None = {_add(prefix, chr(av)) for prefix, _ in open_}
        elif op is c.IN:
            chars = _charset(av, c)
            new = None if chars is None else {_add(prefix, ch) for prefix, _ in open_ for ch in chars}
        elif op in (c.AT, c.ASSERT, c.ASSERT_NOT):  # zero width: ignoring it keeps a superset
            continue
        elif op is c.SUBPATTERN:
            new = _extend(open_, av[-1], n, c)
        elif op is c.BRANCH:
            new = set()
            for branch in av[1]:
                part = _extend(open_, branch, n, c)
                if part is None:
                    return None
                new |= part
        elif op in (c.MAX_REPEAT, c.MIN_REPEAT):
            low, _, sub = av
            new = set() if low > 0 else set(open_)
            current: set | None = open_
            for _ in range(n):
                current = _extend(current, sub, n, c)
                if current is None:
                    return None
                new |= current
        else:
            return None
        if new is None:
            return None
        states = (states - open_) | new
    return states


def _add(prefix: str, char: str) -> tuple[str, bool]:
    char = char.lower()
    if "a" <= char <= "z":
        return prefix + char, False
    return (prefix or char), True


def _charset(items: Any, c: Any) -> set[str] | None:
    chars: set[str] = set()
    for op, av in items:
        if op is c.LITERAL:
            chars.add(chr(av))
        elif op is c.RANGE and av[1] - av[0] < 64:
            chars.update(chr(code) for code in range(av[0], av[1] + 1))
        else:
            return None
    return chars
