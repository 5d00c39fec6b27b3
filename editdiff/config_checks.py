"""Declarative config validation: one mechanism for every key of every experiment config.

A config is checked as a list of `Section`s — the trainer's, the method's, the data's, the diffusion core's,
a model dataclass's — each a table of `key -> (predicate, what is allowed)` under a dotted prefix, plus
cross-key rules. `validate` runs every section before anything compiles and raises one ValueError listing
every problem in one format, e.g.

    config.train.schedule = 'linear' is invalid; allowed: one of 'constant', 'cosine', 'exponential'
    config.model.unet.block_out_chanels is not a known key; known: act_fn, attention_head_dim, ...
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import ml_collections

Check = tuple[Callable[[Any], bool], str]
# A cross-key rule: reads the whole config (every table check of its section already passed) and returns
# one line per problem, in the same `config.KEY = VALUE ...` format.
Rule = Callable[[ml_collections.ConfigDict], list[str]]


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


def string() -> Check:
    return (lambda v: isinstance(v, str)), "a string"


def optional_int_at_least(low: int) -> Check:
    return (lambda v: v is None or (is_int(v) and v >= low)), f"None or an integer >= {low}"


BOOLEAN: Check = ((lambda v: isinstance(v, bool)), "True or False")
ANY: Check = ((lambda v: True), "any value")


def lookup(config: ml_collections.ConfigDict, dotted_key: str) -> Any:
    """`config.a.b` for "a.b"; KeyError/AttributeError when a part is missing."""
    node = config
    for part in dotted_key.split("."):
        node = node[part]
    return node


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


@dataclasses.dataclass(frozen=True)
class Section:
    """The keys under `prefix` ("" = the config's top level): each checked by its table entry; with
    `closed`, any other key under the prefix is reported as unknown (a typo must not pass silently).
    `optional` keys may be absent. `rules` run after the table checks of this section pass."""

    prefix: str
    checks: Mapping[str, Check]
    rules: tuple[Rule, ...] = ()
    closed: bool = True
    optional: tuple[str, ...] = ()

    def problems(self, config: ml_collections.ConfigDict) -> list[str]:
        found = []
        for key, (is_valid, allowed) in self.checks.items():
            full = _join(self.prefix, key)
            try:
                value = lookup(config, full)
            except (KeyError, AttributeError):
                if key not in self.optional:
                    found.append(f"config.{full} is missing (expected {allowed})")
                continue
            if not is_valid(value):
                found.append(f"config.{full} = {value!r} is invalid; allowed: {allowed}")
        if not found:  # rules read values: only once every value of the table is valid
            for rule in self.rules:
                found += rule(config)
        if self.closed:
            found += self._unknown_keys(config)
        return found

    def _unknown_keys(self, config: ml_collections.ConfigDict) -> list[str]:
        try:
            node = lookup(config, self.prefix) if self.prefix else config
        except (KeyError, AttributeError):
            return []
        if not isinstance(node, (ml_collections.ConfigDict, dict)):
            return []
        known_here = {key.split(".")[0] for key in self.checks}
        unknown = sorted(set(node.keys()) - known_here)
        return [f"config.{_join(self.prefix, key)} is not a known key; known: {', '.join(sorted(known_here))}"
                for key in unknown]


def closed_like(prefix: str, default: ml_collections.ConfigDict, rules: tuple[Rule, ...] = ()) -> list[Section]:
    """Sections admitting exactly the keys of `default` (recursively) under `prefix`, any value: for configs
    whose values another function checks (`rules`, run on the top section), so a misspelt key is still
    reported."""
    sections = [Section(prefix, {key: ANY for key in default.keys()}, rules=rules)]
    for key, value in default.items():
        if isinstance(value, ml_collections.ConfigDict):
            sections += closed_like(f"{prefix}.{key}", value)
    return sections


def find_problems(config: ml_collections.ConfigDict, checks: Mapping[str, Check]) -> list[str]:
    """One line per missing or invalid key of a table of full dotted keys (an open section at the top)."""
    return Section("", checks, closed=False).problems(config)


class ConfigError(ValueError):
    """A config a run cannot start with; the message names each key, its value and what is allowed. main.py
    prints it without a traceback."""


def raise_problems(problems: list[str], what: str) -> None:
    """Raises one ConfigError listing every problem, if there are any."""
    if problems:
        raise ConfigError(f"Invalid {what} config:\n  " + "\n  ".join(problems))


def validate(config: ml_collections.ConfigDict, sections: Iterable[Section], what: str = "experiment") -> None:
    """Checks every section and raises one ConfigError listing all problems of all sections."""
    problems = []
    for section in sections:
        problems += section.problems(config)
    raise_problems(problems, what)
