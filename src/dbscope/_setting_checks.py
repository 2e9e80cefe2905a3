"""The two checks every setting's value goes through: ``Least``, a number's bounds, and
``Choice``, the words a setting may be (used by ``_settings.py`` and ``_replica_settings.py``);
and how a value of the wrong kind is named (``a_kind``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any


def a_kind(value: object) -> str:
    """The kind of ``value``, with its article, for a message: 'an int', 'a str'."""
    name = type(value).__name__
    # A U is said "you" in the names that start with one: a UUID, a URL, a uint8.
    vowel = name[0] in "aeioAEIO"
    return f"{'an' if vowel else 'a'} {name}"


@dataclass(frozen=True)
class Choice:
    """The words a setting may be (in any case, blanks around), and what another is told.

    Attributes:
        words: the values it may take.
        message: the error, ``{value}`` standing for the value given, quoted.
        hints: for a word it may not be that people write, what to add to the message.
    """

    words: tuple[object, ...]
    message: str
    hints: Mapping[str, str] = field(default_factory=dict)

    def check(self, given: Any) -> Any:
        """``given``, stripped and lower-cased, if it is one of the words; else ValueError."""
        wanted = given.strip().lower() if isinstance(given, str) else given
        if wanted in self.words:
            return wanted
        hint = self.hints.get(wanted, "") if isinstance(wanted, str) else ""
        raise ValueError(self.message.format(value=repr(given)) + hint)


@dataclass(frozen=True)
class Least:
    """The least value a numeric setting may take, and what a value below it is told.

    Attributes:
        value: the bound.
        message: the error, ``{value}`` standing for the value given.
        allowed: whether the bound itself is allowed (``False``: the value must be above it).
    """

    value: float
    message: str
    allowed: bool = True
    most: float | None = None
    """The greatest value allowed, if any; a value above it is told ``most_message``."""
    most_message: str = ""
    refused: Mapping[float, str] = field(default_factory=dict)
    """Values within the bounds that are refused all the same, each with what it is told."""

    def check(self, given: float | None) -> float | None:
        """``given`` if it is unset or within the bounds, else ValueError with the message."""
        if given is None:
            return given
        if given in self.refused:
            raise ValueError(self.refused[given])
        if not math.isfinite(given):
            # nan compares false with every bound: a NaN pool_timeout would refuse every
            # waiter at once.
            raise ValueError(f"must be a finite number, got {given!r}")
        if given < self.value if self.allowed else given <= self.value:
            raise ValueError(self.message.format(value=given))
        if self.most is not None and given > self.most:
            raise ValueError(self.most_message.format(value=given, most=self.most))
        return given
