"""The public modules' objects shown under the public module's name (``dbscope.PoolStats``,
not ``dbscope._pool_stats.PoolStats``) in tracebacks, reprs and ``help()``."""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Mapping, Sequence
from typing import Any


def present_as(module: str, namespace: Mapping[str, Any], names: Sequence[str]) -> None:
    """Give each object of ``namespace`` named in ``names`` the module name ``module``.

    A class's string annotations (``from __future__ import annotations``) are resolved first,
    where they were written: pydantic and ``typing.get_type_hints()`` look their names up in
    the namespace of ``__module__``, which knows none of them once it is the public module's
    (an endpoint declared ``-> PoolStats`` failed on every request).
    """
    for name in names:
        public = namespace[name]
        if isinstance(public, type):
            _resolve_annotations(public)
        public.__module__ = module


def _resolve_annotations(cls: type) -> None:
    try:
        hints = typing.get_type_hints(cls)
    except NameError:  # a name imported for type checking only: left as written
        return
    own = inspect.get_annotations(cls)
    cls.__annotations__ = {name: hints.get(name, kind) for name, kind in own.items()}
    if dataclasses.is_dataclass(cls):
        for field in dataclasses.fields(cls):
            field.type = hints.get(field.name, field.type)
