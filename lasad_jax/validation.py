"""What every typed config block shares: its problems collected, then raised together.

Each block of the run configuration (data, tokenizer, model, optimizer, ...) is a frozen
dataclass that checks its own fields in `__post_init__`. It does not stop at the first
bad field: it collects one line per problem, naming the field (`sample.top_p`) and the
valid values, and raises them all in one `ConfigError`. The entry
(`lasad_jax.config.parse`) gathers the errors of every block, adds the cross-block and
per-mode checks, and reports the whole list at once, so a config is fixed in one round.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

# URL schemes the package reads and writes (through tf.io.gfile, `lasad_jax.files`). Only
# Cloud Storage; tests add TensorFlow's in-memory "ram://" to run the remote code paths.
REMOTE_SCHEMES: tuple[str, ...] = ("gs://",)
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)")


class ConfigError(ValueError):
    """One or more config problems, each one line naming the field and what is valid."""

    def __init__(self, problems: Iterable[str], header: str | None = None):
        self.problems = tuple(problems)
        self.header = header
        super().__init__(str(self))

    def __str__(self) -> str:
        if self.header is None and len(self.problems) == 1:
            return self.problems[0]
        header = self.header or f"{len(self.problems)} config problems"
        return header + ":\n  - " + "\n  - ".join(self.problems)


def problems_of(err: ValueError) -> list[str]:
    """The problem lines of an error raised while building a block: all of a
    `ConfigError`'s, or the message of any other ValueError as one problem."""
    return list(err.problems) if isinstance(err, ConfigError) else [str(err)]


def url_scheme(path: str | os.PathLike) -> str | None:
    """`"gs://"` for `gs://bucket/x`: the scheme a path starts with, if any."""
    match = _SCHEME.match(os.fspath(path))
    return match.group(1) if match else None


def location_problem(field: str, path: str | os.PathLike) -> str | None:
    """One line naming `field` when `path` is a URL of a scheme other than
    `REMOTE_SCHEMES` (which would otherwise fail deep in a library, or be written to a
    local folder named after the URL); None for a local path or a supported URL."""
    scheme = url_scheme(path)
    if scheme is None or scheme in REMOTE_SCHEMES:
        return None
    return (f"{field}={os.fspath(path)!r} uses the unsupported scheme {scheme}; give a "
            f"local path or a {' or '.join(REMOTE_SCHEMES)} URL")


def is_int(value: Any) -> bool:
    """An int that is not a bool (True would otherwise pass as 1)."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_seed(value: Any) -> bool:
    return is_int(value) and 0 <= value < 2**32


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class Problems:
    """The problems of one block; every message starts with `block.field`.

    `check` and the typed helpers append one line when a condition fails;
    `raise_if_any` raises them together (call it last in `__post_init__`).
    """

    def __init__(self, block: str):
        self.block = block
        self.lines: list[str] = []

    def add(self, field: str, message: str) -> None:
        self.lines.append(f"{self.block}.{field} {message}")

    def add_block(self, message: str) -> None:
        """A problem of the block as a whole (several fields together)."""
        self.lines.append(f"{self.block}: {message}")

    def check(self, ok: bool, field: str, message: str) -> bool:
        if not ok:
            self.add(field, message)
        return ok

    def one_of(self, field: str, value: Any, valid: tuple[Any, ...]) -> bool:
        return self.check(value in valid, field, f"must be one of {valid}, got {value!r}")

    def int_at_least(self, field: str, value: Any, low: int) -> bool:
        return self.check(is_int(value) and value >= low, field,
                          f"must be an int >= {low}, got {value!r}")

    def positive_int(self, field: str, value: Any) -> bool:
        return self.check(is_int(value) and value >= 1, field,
                          f"must be a positive int, got {value!r}")

    def number(self, field: str, value: Any, *, low: float | None = None,
               high: float | None = None, low_open: bool = False,
               high_open: bool = False) -> bool:
        """A finite number in the interval given by `low`/`high` (closed unless `*_open`):
        an infinite learning rate or epsilon passes any lower bound and fails only later,
        as a diverged run."""
        ok = is_number(value) and math.isfinite(value)
        if ok and low is not None:
            ok = value > low if low_open else value >= low
        if ok and high is not None:
            ok = value < high if high_open else value <= high
        if low is not None and high is not None:
            want = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low is not None:
            want = f"{'>' if low_open else '>='} {low:g}"
        elif high is not None:
            want = f"{'<' if high_open else '<='} {high:g}"
        else:
            want = "a number"
        return self.check(ok, field, f"must be {want}, got {value!r}")

    def file_name(self, field: str, value: Any) -> bool:
        """A name that files are made from inside one directory: no separator and no
        `..`, which would write outside it (or into a folder it would create)."""
        ok = (isinstance(value, str) and value not in ("", ".", "..")
              and not any(c in value for c in "/\\\0"))
        return self.check(ok, field, "must be a non-empty file name without '/', '\\' or "
                          f"'..', got {value!r}")

    def seed(self, field: str, value: Any) -> bool:
        """A seed every consumer takes: grain's shuffle and numpy want [0, 2**32)."""
        return self.check(is_seed(value), field, f"must be an int in [0, 2**32), got {value!r}")

    def string(self, field: str, value: Any) -> bool:
        return self.check(isinstance(value, str), field, f"must be a string, got {value!r}")

    def location(self, field: str, value: Any) -> bool:
        """A path field: a string that is local or a supported URL (`gs://`); any other
        `scheme://` would fail deep inside a reader, or be written to a local folder
        named after the URL."""
        if not self.string(field, value):
            return False
        problem = location_problem(field, value)
        if problem is not None:
            self.lines.append(f"{self.block}.{problem}")
        return problem is None

    def raise_if_any(self) -> None:
        if self.lines:
            raise ConfigError(self.lines)


def check_location(field: str, path: str) -> str:
    """`path` when it is local or a supported URL; else a `ConfigError` of one line
    naming `field` (a flag such as `--workdir`, or a config field)."""
    problem = location_problem(field, path)
    if problem is not None:
        raise ConfigError([problem])
    return path


def block_from_mapping(cls: type[T], block: str, values: Mapping[str, Any] | None) -> T:
    """The block `cls` from a mapping of its fields (a config file's block as a dict).

    Fields the mapping leaves out keep the block's defaults; an unknown field is an
    error (a typo must not silently do nothing). Lists become tuples, as the frozen
    blocks hold tuples.
    """
    if values is not None and not isinstance(values, Mapping):
        raise ConfigError([f"{block} must be a block of fields (a dict), got {values!r}"])
    values = dict(values or {})
    known = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError([f"{block} has unknown fields {unknown}; valid fields: "
                           f"{sorted(known)}"])
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
