"""Subjects, patterns and the interest index.

A subject is dot-separated tokens. In a subscription pattern the token ``*`` matches
exactly one token and a final ``>`` matches one or more; ``*`` or ``>`` inside a longer
token is an ordinary character. :class:`Index` stores patterns in a token trie, so a
subject is matched by walking at most (literal, ``*``, ``>``) branches per token instead
of testing every pattern, and remembers recent answers until the pattern set changes.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Generic, TypeVar

# JavaScript's \s with the u flag (what upstream tests tokens against), spelled out:
# Python's \s differs (it has U+001C-U+001F and U+0085, lacks U+FEFF).
_JS_SPACE = (
    "\t\n\x0b\x0c\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000\ufeff"
)
_HAS_SPACE = re.compile("[" + re.escape(_JS_SPACE) + "]").search


def is_valid_subject(subject: object) -> bool:
    """Valid as a subscription pattern (wildcards allowed)."""
    if not isinstance(subject, str) or not subject:
        return False
    if subject[0] == "." or subject[-1] == "." or ".." in subject:
        return False
    if _HAS_SPACE(subject) is not None:
        return False
    gt = subject.find(">")
    if gt >= 0:
        # ">" as a whole token only at the end
        tokens = subject.split(".")
        for token in tokens[:-1]:
            if token == ">":
                return False
    return True


def is_valid_subject_without_wildcards(subject: object) -> bool:
    """Valid for publishing: no ``*`` anywhere and no trailing ``>``."""
    return (isinstance(subject, str) and "*" not in subject and not subject.endswith(">")
            and is_valid_subject(subject))


def matches(pattern: str, subject: str) -> bool:
    """The reference matcher (one pattern, one subject); the index must agree with it."""
    p = pattern.split(".")
    s = subject.split(".")
    for i, token in enumerate(p):
        if token == ">" and i == len(p) - 1:
            return len(s) > i
        if i >= len(s):
            return False
        if token != "*" and token != s[i]:
            return False
    return len(s) == len(p)


V = TypeVar("V")


class _Node(Generic[V]):
    __slots__ = ("children", "star", "value", "tail")

    def __init__(self) -> None:
        self.children: dict[str, _Node[V]] = {}
        self.star: _Node[V] | None = None
        self.value: V | None = None
        """The entry for the pattern ending here."""
        self.tail: V | None = None
        """The entry for the pattern ending here with ``.>`` (or ``>`` at the root)."""

    def empty(self) -> bool:
        return not self.children and self.star is None and self.value is None and self.tail is None


class Index(Generic[V]):
    """pattern -> value, and subject -> values of every matching pattern."""

    def __init__(self, cache_size: int = 10000) -> None:
        self._root: _Node[V] = _Node()
        self._patterns: dict[str, V] = {}
        self._cache: dict[str, list[V]] = {}
        self.cache_size = cache_size

    def __len__(self) -> int:
        return len(self._patterns)

    def __contains__(self, pattern: str) -> bool:
        return pattern in self._patterns

    def get(self, pattern: str) -> V | None:
        return self._patterns.get(pattern)

    def items(self) -> Iterator[tuple[str, V]]:
        return iter(list(self._patterns.items()))

    def add(self, pattern: str, value: V) -> None:
        """Store ``value`` for ``pattern`` (which must be valid and not yet present)."""
        if pattern in self._patterns:
            raise KeyError(f"pattern {pattern!r} already indexed")
        tokens = pattern.split(".")
        node = self._root
        tail = tokens[-1] == ">"
        for token in tokens[:-1] if tail else tokens:
            if token == "*":
                if node.star is None:
                    node.star = _Node()
                node = node.star
            else:
                child = node.children.get(token)
                if child is None:
                    child = node.children[token] = _Node()
                node = child
        if tail:
            node.tail = value
        else:
            node.value = value
        self._patterns[pattern] = value
        self._cache.clear()

    def remove(self, pattern: str) -> V | None:
        """Forget ``pattern``; branches left empty are pruned (and nothing else)."""
        value = self._patterns.pop(pattern, None)
        if value is None:
            return None
        tokens = pattern.split(".")
        tail = tokens[-1] == ">"
        path: list[tuple[_Node[V], str]] = []
        node = self._root
        for token in tokens[:-1] if tail else tokens:
            path.append((node, token))
            nxt = node.star if token == "*" else node.children.get(token)
            assert nxt is not None, "index out of step with its pattern table"
            node = nxt
        if tail:
            node.tail = None
        else:
            node.value = None
        for parent, token in reversed(path):
            if not node.empty():
                break
            if token == "*":
                parent.star = None
            else:
                del parent.children[token]
            node = parent
        self._cache.clear()
        return value

    def match(self, subject: str) -> list[V]:
        """Values of every pattern matching ``subject`` (a cached list: do not modify)."""
        hit = self._cache.get(subject)
        if hit is not None:
            return hit
        out: list[V] = []
        tokens = subject.split(".")
        n = len(tokens)
        # depth first, literal branch before ``*``; a loop, as patterns have no length limit
        stack = [(self._root, 0)]
        while stack:
            node, i = stack.pop()
            if node.tail is not None and i < n:
                out.append(node.tail)
            if i == n:
                if node.value is not None:
                    out.append(node.value)
                continue
            if node.star is not None:
                stack.append((node.star, i + 1))
            child = node.children.get(tokens[i])
            if child is not None:
                stack.append((child, i + 1))
        if len(self._cache) >= self.cache_size:
            self._cache.clear()
        self._cache[subject] = out
        return out

    def has_match(self, subject: str) -> bool:
        return bool(self.match(subject))
