"""The ``SemanticId`` value type: L level codes plus a disambiguation suffix.

>>> sid = SemanticId((12, 201, 7), 0)
>>> str(sid)
'12-201-7-0'
>>> SemanticId.parse("12-201-7-0") == sid
True
>>> sid.prefix(2)
(12, 201)
>>> sid.tokens()
'<a_12><b_201><c_7><d_0>'
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .errors import ConfigError

__all__ = ["SemanticId"]

_PART = re.compile(r"^(0|[1-9][0-9]*)$")


@dataclass(frozen=True, order=True, slots=True)
class SemanticId:
    """An item's semantic ID: ``levels`` (c_1, ..., c_L) and the collision ``suffix`` (0..n-1).

    Items whose L codes are equal share a prefix of every depth and are told apart by the suffix.
    Instances are immutable, hashable and ordered like their string form's numbers.
    """

    levels: tuple[int, ...]
    suffix: int = 0

    def __post_init__(self):
        levels = tuple(self.levels)
        if not levels:
            raise ConfigError("a semantic ID needs at least one level")
        for v in (*levels, self.suffix):
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ConfigError(f"semantic ID parts must be non-negative ints, got {v!r}")
        object.__setattr__(self, "levels", levels)

    @classmethod
    def _trusted(cls, levels: tuple[int, ...], suffix: int) -> "SemanticId":
        """Build without validation, for values read from the store (hot path)."""
        sid = _new(cls)
        _set_levels(sid, levels)  # the slots' own setters: frozen blocks only __setattr__
        _set_suffix(sid, suffix)
        return sid

    @property
    def depth(self) -> int:
        """Number of levels L (the suffix not counted)."""
        return len(self.levels)

    def prefix(self, k: int) -> tuple[int, ...]:
        """The first k level codes, 1 <= k <= L."""
        if not 1 <= k <= len(self.levels):
            raise ConfigError(f"prefix depth must be in 1..{len(self.levels)}, got {k}")
        return self.levels[:k]

    def tokens(self) -> str:
        """Token string for a generative model: ``<a_12><b_201><c_7><d_0>`` (suffix last)."""
        return token_string((*self.levels, self.suffix))

    def __str__(self) -> str:
        return id_string((*self.levels, self.suffix))

    @classmethod
    def parse(cls, text: str, n_levels: int | None = None) -> "SemanticId":
        """Parse ``"12-201-7-0"`` (levels then suffix). ``n_levels`` checks the depth."""
        parts = str(text).strip().split("-")
        if len(parts) < 2 or not all(_PART.match(p) for p in parts):
            raise ConfigError(
                f"malformed semantic ID {text!r}: expected non-negative integers joined by '-', "
                "levels then suffix, e.g. '12-201-7-0'")
        values = [int(p) for p in parts]
        sid = cls(tuple(values[:-1]), values[-1])
        if n_levels is not None and sid.depth != n_levels:
            raise ConfigError(f"semantic ID {text!r} has {sid.depth} levels, expected {n_levels}")
        return sid


_new = object.__new__
# the slots' member descriptors, read from the class dict (the checker sees the fields' types on
# attribute access, not the descriptors)
_set_levels: Callable[[SemanticId, tuple[int, ...]], None] = vars(SemanticId)["levels"].__set__
_set_suffix: Callable[[SemanticId, int], None] = vars(SemanticId)["suffix"].__set__


def id_string(parts: Sequence[int]) -> str:
    """``12-201-7-0`` for the parts (c_1, ..., c_L, suffix): the form ``SemanticId.parse``
    reads."""
    return "-".join(map(str, parts))


def token_string(parts: Sequence[int]) -> str:
    """``<a_12><b_201><c_7><d_0>`` for the parts (c_1, ..., c_L, suffix)."""
    return "".join([f"{head}{v}>" for head, v in zip(token_heads(len(parts)), parts)])


@functools.lru_cache(maxsize=64)
def token_heads(n: int) -> tuple[str, ...]:
    """``("<a_", "<b_", ...)``: the token prefix of each of n positions."""
    return tuple(f"<{_letter(i)}_" for i in range(n))


def _letter(i: int) -> str:
    """a, b, ..., z, aa, ab, ... for token names."""
    out = ""
    i += 1
    while i:
        i, r = divmod(i - 1, 26)
        out = chr(97 + r) + out
    return out
