"""`FinprogError`, the base of every error finprog raises for bad input, and the type check of options dataclasses.

Catch `finprog.FinprogError` to catch any of them; the command line prints one as a single
line and exits with status 2. Anything else that escapes is a bug. This module imports
nothing heavy, so every module may import it.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import types
import typing


class FinprogError(Exception):
    """Bad input or a request that cannot work; the message names the file or option, what was wrong and what to do."""


def check_types(options, error: type[FinprogError], paths: tuple[str, ...] = ()) -> None:
    """Check every field of the dataclass instance `options` against its annotation, raising `error` naming the field.

    The fields in `paths` also take an `os.PathLike` (or a list or tuple of str and PathLike where the
    annotation allows a list) and are stored as strings, as run.json keeps them.
    """
    hints = _hints(type(options))
    for field in dataclasses.fields(options):
        if not field.init:
            continue
        value = getattr(options, field.name)
        if field.name in paths:
            value = _path_text(value)
            setattr(options, field.name, value)
        if not _matches(value, hints[field.name]):
            raise error(f"{type(options).__name__}.{field.name} must be {_describe(hints[field.name])}, "
                        f"got {value!r} ({type(value).__name__})")


@functools.cache
def _hints(cls: type) -> dict:
    return typing.get_type_hints(cls)


def _path_text(value):
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        return [os.fspath(item) if isinstance(item, os.PathLike) else item for item in value]
    return value


def _matches(value, hint) -> bool:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_matches(item, typing.get_args(hint)[0]) for item in value)
    if hint is type(None):
        return value is None
    if hint in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, (int, float) if hint is float else hint)


_NAMES = {int: "a whole number", float: "a number", str: "a string", bool: "True or False", type(None): "None"}


def _describe(hint) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return f"a list, each {_describe(typing.get_args(hint)[0])}"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))
