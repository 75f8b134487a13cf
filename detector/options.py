"""Typed options, checked once where they come in.

Each option of a configuration value type is a dataclass field declared with
:func:`option`: its type and, for numbers, its range.  :func:`check` runs in
``__post_init__``: it converts what may be converted without loss (an int
where a float is wanted, a string where a path is) and raises
:class:`OptionError` for anything else, naming the option by its key
(``tile_px``).  The edge that read the option names it as its user wrote it:
the CLI as ``--tile-px``, a batch file as ``[run] tile_px``
(:meth:`OptionError.render`).

Why our own checks and not pydantic: the options are few and flat, the same
dataclasses serve the CLI and TOML, and the messages must follow the house
form (the value, what is expected, how to fix it) under either name.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detector.errors import InputError

NUMBER_KINDS: dict[type, str] = {int: "a whole number", float: "a finite number"}


@dataclasses.dataclass(frozen=True, slots=True)
class Spec:
    """What one option takes: a type, and for numbers the open or closed bounds ``low < value <= high``."""

    kind: type
    low: float = -math.inf
    high: float = math.inf
    low_closed: bool = False
    optional: bool = False
    choices: tuple[str, ...] = ()

    def expected(self) -> str:
        if self.choices:
            return f"one of {', '.join(self.choices)}"
        if self.kind in NUMBER_KINDS:
            bounds = [f"{'>=' if self.low_closed else '>'} {self.low:g}"] if self.low > -math.inf else []
            bounds += [f"<= {self.high:g}"] if self.high < math.inf else []
            return f"{NUMBER_KINDS[self.kind]} {' and '.join(bounds)}".strip()
        return {str: "a text", Path: "a file path", bool: "true or false", list: "a list"}[self.kind]


def option(default: Any, kind: type, *, low: float = -math.inf, high: float = math.inf, low_closed: bool = False,
           choices: tuple[str, ...] = ()) -> Any:
    """A dataclass field with its :class:`Spec`: ``default`` None makes the option optional, :data:`REQUIRED`
    makes it required."""
    spec = Spec(kind, low, high, low_closed, optional=default is None, choices=choices)
    if default is REQUIRED:
        return dataclasses.field(metadata={"spec": spec})
    return dataclasses.field(default=default, metadata={"spec": spec})


REQUIRED: Any = dataclasses.MISSING


def keys(value_type: type) -> tuple[str, ...]:
    """The option keys of a dataclass type, in order."""
    return tuple(f.name for f in dataclasses.fields(value_type) if "spec" in f.metadata)


def required(value_type: type) -> tuple[str, ...]:
    """The option keys that have no default."""
    return tuple(f.name for f in dataclasses.fields(value_type)
                 if "spec" in f.metadata and f.default is dataclasses.MISSING
                 and f.default_factory is dataclasses.MISSING)


class OptionError(InputError):
    """A bad option value: ``message`` has one ``{}`` per key of ``keys``, filled with each key's name."""

    def __init__(self, keys: tuple[str, ...], message: str) -> None:
        self.keys, self.message = keys, message
        super().__init__(self.render(flag))

    def render(self, name: Callable[[str], str]) -> str:
        return self.message.format(*(name(k) for k in self.keys))


def literal(text: object) -> str:
    """``text`` for an :class:`OptionError` message: braces kept as they are."""
    return str(text).replace("{", "{{").replace("}", "}}")


def flag(key: str) -> str:
    """A key as the CLI's flag: ``tile_px`` is ``--tile-px``."""
    return "--" + key.replace("_", "-")


def check(value: Any) -> None:
    """Check and convert every :func:`option` field of a frozen dataclass instance, in place."""
    for field in dataclasses.fields(value):
        spec = field.metadata.get("spec")
        if spec is not None:
            object.__setattr__(value, field.name, checked(field.name, getattr(value, field.name), spec))


def checked(key: str, value: Any, spec: Spec) -> Any:
    """``value`` as ``spec.kind`` and within its bounds and choices, or :class:`OptionError`."""
    if value is None and spec.optional:
        return None
    found = converted(value, spec.kind)
    number = found is not None and spec.kind in NUMBER_KINDS
    low_ok = number and math.isfinite(found) and (found >= spec.low if spec.low_closed else found > spec.low)
    inside = found is not None and (not number or (low_ok and found <= spec.high))
    if not inside or (spec.choices and found not in spec.choices):
        raise OptionError((key,), "{} is " + literal(f"{value!r}: give {spec.expected()}"))
    return found


def converted(value: Any, kind: type) -> Any:
    """``value`` as ``kind`` without loss, or None."""
    if isinstance(value, bool):
        return value if kind is bool else None
    if kind is float and isinstance(value, (int, float)):
        return float(value)
    if kind is Path and isinstance(value, (str, Path)):
        return Path(value)
    return value if isinstance(value, kind) else None
