"""Declarative config validation: a table of `dotted.key -> (predicate, what is allowed)` checked in one pass.

Every experiment validates its whole ConfigDict with these before anything compiles, so a bad value is one
error that names the key, the value and what is allowed, e.g.

    config.train.schedule = 'linear' is invalid; allowed: one of 'constant', 'cosine'
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import ml_collections

Check = tuple[Callable[[Any], bool], str]


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def int_at_least(low: int) -> Check:
    return (lambda v: is_int(v) and v >= low), f"an integer >= {low}"


def number_at_least(low: float) -> Check:
    return (lambda v: is_number(v) and v >= low), f"a number >= {low}"


def number_above(low: float) -> Check:
    return (lambda v: is_number(v) and v > low), f"a number > {low}"


def number_in(low: float, high: float, *, high_open: bool = False) -> Check:
    if high_open:
        return (lambda v: is_number(v) and low <= v < high), f"a number in [{low}, {high})"
    return (lambda v: is_number(v) and low <= v <= high), f"a number in [{low}, {high}]"


def one_of(options: tuple) -> Check:
    return (lambda v: v in options), "one of " + ", ".join(repr(o) for o in options)


BOOLEAN: Check = ((lambda v: isinstance(v, bool)), "True or False")


def lookup(config: ml_collections.ConfigDict, dotted_key: str) -> Any:
    """`config.a.b` for "a.b"; KeyError/AttributeError when a part is missing."""
    node = config
    for part in dotted_key.split("."):
        node = node[part]
    return node


def find_problems(config: ml_collections.ConfigDict, checks: Mapping[str, Check]) -> list[str]:
    """One line per missing or invalid key: `config.KEY = VALUE is invalid; allowed: ...`."""
    problems = []
    for key, (is_valid, allowed) in checks.items():
        try:
            value = lookup(config, key)
        except (KeyError, AttributeError):
            problems.append(f"config.{key} is missing (expected {allowed})")
            continue
        if not is_valid(value):
            problems.append(f"config.{key} = {value!r} is invalid; allowed: {allowed}")
    return problems


def raise_problems(problems: list[str], what: str) -> None:
    """Raises one ValueError listing every problem, if there are any."""
    if problems:
        raise ValueError(f"Invalid {what} config:\n  " + "\n  ".join(problems))
