# SPDX-License-Identifier: Apache-2.0
"""The keyword options a class accepts, read from its signature, and checks of TOML values."""

from __future__ import annotations

import collections.abc
import datetime as dt
import functools
import inspect
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["Parameter", "check_value", "describe_kinds", "parameters"]

# The TOML value kinds a parameter accepts. "any" accepts every value.
_KIND_NAMES = {
    "str": "a string",
    "int": "an integer",
    "float": "a number",
    "bool": "true or false",
    "list": "an array",
    "table": "a table",
    "date": "a date",
    "time": "a time of day",
}
_SEQUENCE_ORIGINS = {
    list,
    tuple,
    set,
    frozenset,
    collections.abc.Iterable,
    collections.abc.Collection,
    collections.abc.Sequence,
    collections.abc.Set,
}
_MAPPING_ORIGINS = {dict, collections.abc.Mapping, collections.abc.MutableMapping}


@dataclass(frozen=True, slots=True)
class Parameter:
    """
    One keyword parameter of a constructor, as a policy file can set it.

    Attributes:
        name: The parameter name, which is also the key in the file.
        kinds: The TOML value kinds it accepts; contains ``any`` when the hint is not precise.
        choices: The allowed strings when the hint is a ``Literal``; empty otherwise.
        wants_tuple: Whether an array should be passed as a tuple.
        required: Whether the parameter has no default.
    """

    name: str
    kinds: frozenset[str]
    choices: tuple[str, ...]
    wants_tuple: bool
    required: bool


@functools.cache
def parameters(factory: Callable[..., Any]) -> dict[str, Parameter]:
    """
    Return the keyword parameters of ``factory`` (a class or function), keyed by name.

    ``*args`` and ``**kwargs`` are left out: a class that takes ``**options`` lists those
    options itself.
    """
    function = _signature_target(factory)
    signature = inspect.signature(function)
    module_globals = getattr(function, "__globals__", {})
    found: dict[str, Parameter] = {}
    for name, parameter in signature.parameters.items():
        if name == "self" or parameter.kind in (
            inspect.Parameter.VAR_POSITIONAL,
            inspect.Parameter.VAR_KEYWORD,
            inspect.Parameter.POSITIONAL_ONLY,
        ):
            continue
        hint = _evaluate(parameter.annotation, module_globals)
        kinds, choices, wants_tuple = _kinds(hint)
        found[name] = Parameter(
            name,
            frozenset(kinds),
            tuple(choices),
            wants_tuple,
            parameter.default is inspect.Parameter.empty,
        )

    return found


def takes_extra_options(factory: Callable[..., Any]) -> bool:
    """Return whether ``factory`` accepts keyword arguments beyond its named parameters."""
    function = _signature_target(factory)
    return any(
        parameter.kind is inspect.Parameter.VAR_KEYWORD
        for parameter in inspect.signature(function).parameters.values()
    )


def _signature_target(factory: Callable[..., Any]) -> Callable[..., Any]:
    if isinstance(factory, type):
        initializer: Callable[..., Any] = factory.__init__  # type: ignore[misc]
        return initializer
    return factory


def _evaluate(annotation: object, module_globals: dict[str, Any]) -> object:
    """Turn a string annotation into a type; names imported only for type checking give Any."""
    if annotation is inspect.Parameter.empty:
        return Any
    if not isinstance(annotation, str):
        return annotation
    holder = types.SimpleNamespace(__annotations__={"value": annotation})
    try:
        hints = typing.get_type_hints(holder, globalns=module_globals)
    except (NameError, AttributeError, TypeError, SyntaxError):
        return Any

    return hints["value"]


def _kinds(hint: object) -> tuple[set[str], list[str], bool]:
    if hint is Any or hint is object:
        return {"any"}, [], False
    origin = typing.get_origin(hint)
    arguments = typing.get_args(hint)

    if origin is typing.Union or origin is types.UnionType:
        kinds: set[str] = set()
        choices: list[str] = []
        wants_tuple = False
        for argument in arguments:
            if argument is type(None):
                continue
            more_kinds, more_choices, more_tuple = _kinds(argument)
            kinds |= more_kinds
            choices += more_choices
            wants_tuple = wants_tuple or more_tuple
        # A plain str next to a Literal lifts the restriction to the Literal's values.
        if str in arguments:
            choices = []
        return kinds, choices, wants_tuple
    if origin is typing.Literal:
        values = [value for value in arguments if isinstance(value, str)]
        return {"str"}, values, False
    if hint is bool:
        return {"bool"}, [], False
    if hint is int:
        return {"int"}, [], False
    if hint is float:
        return {"int", "float"}, [], False
    if hint is str or hint is os.PathLike or origin is os.PathLike:
        return {"str"}, [], False
    if hint is dt.date:
        return {"date"}, [], False
    if hint is dt.time:
        return {"time"}, [], False
    if origin in _SEQUENCE_ORIGINS or hint in _SEQUENCE_ORIGINS:
        return {"list"}, [], origin is tuple
    if origin in _MAPPING_ORIGINS or hint in _MAPPING_ORIGINS:
        return {"table"}, [], False
    # ``type X = ...`` aliases (Python 3.12) carry their meaning in __value__.
    alias_value = getattr(hint, "__value__", None)
    if alias_value is not None:
        return _kinds(alias_value)

    return set(), [], False


def kind_of(value: object) -> str:
    """Return the TOML kind of a value that tomllib produced."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "str"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, dt.time):
        return "time"
    if isinstance(value, dt.date):
        return "date"

    return type(value).__name__


def describe_kinds(kinds: frozenset[str]) -> str:
    """Describe accepted kinds in words: ``a string or an array``."""
    names = [_KIND_NAMES[kind] for kind in _KIND_NAMES if kind in kinds]
    if "float" in kinds and "int" in kinds:
        names.remove(_KIND_NAMES["int"])
    if len(names) <= 1:
        return names[0] if names else "nothing a policy file can express"

    return ", ".join(names[:-1]) + " or " + names[-1]


def check_value(parameter: Parameter, value: object) -> str | None:
    """Return why ``value`` does not fit ``parameter``, or ``None`` when it fits."""
    if "any" in parameter.kinds:
        return None
    if not parameter.kinds:
        # The hint names only Python classes, such as an HTTP client or a state store.
        return (
            "takes a Python object, which a policy file cannot express: remove it, and set it "
            "in Python on the loaded objects if needed"
        )
    kind = kind_of(value)
    if kind not in parameter.kinds:
        return f"must be {describe_kinds(parameter.kinds)}, not {value!r}"
    if parameter.choices and isinstance(value, str) and value not in parameter.choices:
        allowed = ", ".join(repr(choice) for choice in parameter.choices)
        return f"must be one of {allowed}, not {value!r}"

    return None
