"""Options that are a choice among strings, declared once: as a ``typing.Literal`` type hint.

The run configuration (:mod:`amst.config`) and the pre-alignment's options
(:class:`amst.prealign.PrealignConfig`) type every such option ``Literal[...]`` (``Literal[...]
| None`` where it may be left out). The allowed values are read from that hint, here, both
when a YAML file or flat options are parsed and when ``validate()`` checks a configuration
built in Python: there is no second list of them to keep in step.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from typing import Any, Callable

_UNIONS = (typing.Union, types.UnionType)

# (config key, the value as the user wrote it, allowed values, whether it may be left out) -> message
ChoiceMessage = Callable[[str, Any, tuple[Any, ...], bool], str]


def literal_values(hint: Any) -> tuple[Any, ...] | None:
    """The values a ``Literal`` hint allows; None for a hint that is not one.

    ``Literal["px", "nm"] | None`` counts as a Literal (see :func:`allows_none`); a union
    with any other type (``tuple[float, ...] | str``) does not.
    """
    origin = typing.get_origin(hint)
    if origin is typing.Literal:
        return typing.get_args(hint)
    if origin in _UNIONS:
        members = [a for a in typing.get_args(hint) if a is not type(None)]
        if members and all(typing.get_origin(a) is typing.Literal for a in members):
            return tuple(v for a in members for v in typing.get_args(a))
    return None


def allows_none(hint: Any) -> bool:
    """True for a union with None (``X | None``)."""
    return typing.get_origin(hint) in _UNIONS and type(None) in typing.get_args(hint)


@functools.cache
def choice_fields(cls: type) -> dict[str, tuple[tuple[Any, ...], bool]]:
    """Every ``Literal``-typed field of the dataclass ``cls``: name -> (allowed values,
    whether None is allowed), in field order. Resolved once per class."""
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        allowed = literal_values(hints[f.name])
        if allowed is not None:
            out[f.name] = (allowed, allows_none(hints[f.name]))
    return out


def choice_message(key: str, value: Any, allowed: tuple[Any, ...], optional: bool) -> str:
    """``"{key}: {value!r} is not allowed; use one of a, b, c"`` (``use a`` for a single
    value; ``(or leave it out)`` where None is allowed)."""
    use = f"{allowed[0]}" if len(allowed) == 1 else f"one of {', '.join(str(a) for a in allowed)}"
    return f"{key}: {value!r} is not allowed; use {use}" + (" (or leave it out)" if optional else "")


def coerce_choice(key: str, value: Any, allowed: tuple[Any, ...], optional: bool = False,
                  message: ChoiceMessage = choice_message) -> Any:
    """``value`` if it is one of ``allowed`` (None too, with ``optional``), else a ValueError.

    A text choice takes back what YAML 1.1 reads as something else: an unquoted ``on``/``off``
    is a boolean (``"on"``/``"off"`` again) and ``0.5`` a number (its text, ``"0.5"``).

    Raises
    ------
    ValueError
        ``message(key, value, allowed, optional)``, with a boolean or number shown as that text.
    """
    if value is None and optional:
        return None
    if all(isinstance(a, str) for a in allowed):
        if isinstance(value, bool):
            value = "on" if value else "off"
        elif isinstance(value, (int, float)):
            value = f"{value:g}"
    # By type and value: True == 1 and a numpy array's == would compare element-wise.
    if any(type(value) is type(a) and value == a for a in allowed):
        return value
    raise ValueError(message(key, value, allowed, optional))


def check_choices(obj: Any, prefix: str = "", message: ChoiceMessage = choice_message,
                  recurse: bool = False) -> None:
    """Refuse a value of a ``Literal``-typed field of the dataclass ``obj`` that the hint does
    not allow (:func:`coerce_choice`), and store the text choice a YAML boolean or number
    stands for.

    Parameters
    ----------
    obj : a dataclass instance
    prefix : prepended to the field name in messages (``"register."``)
    message : builds the error message
    recurse : also check the fields of nested dataclasses (their prefix ``"{prefix}{name}."``)

    Raises
    ------
    ValueError
        For the first field (in field order) whose value is not allowed.
    """
    fields = choice_fields(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in fields:
            allowed, optional = fields[f.name]
            checked = coerce_choice(f"{prefix}{f.name}", value, allowed, optional, message)
            if checked is not value:
                setattr(obj, f.name, checked)
        elif recurse and dataclasses.is_dataclass(value) and not isinstance(value, type):
            check_choices(value, f"{prefix}{f.name}.", message, recurse=True)
