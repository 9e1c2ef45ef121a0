"""Command-line flags generated from configuration dataclasses: one flag per field.

A field's flag is ``--field-name`` (or a name given in ``rename``); its help is the first paragraph
of the field's docstring (the string literal under the field, as Sphinx autodoc and
``simple_parsing`` read them) and its default; its type, choices and on/off form come from the
annotation (``int``, ``float``, ``str``, ``Path``, ``bool`` as ``--x/--no-x``, ``Literal`` or an
``Enum`` as choices, ``X | None``, ``int | str``): a choice's values are read from its enum, never
listed again by a command. So a new field of :mod:`ptycho_torch.config` gets a ``ptychopinn train``
flag and its help without editing the command. Standard library only.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import enum
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Collection, Mapping
from functools import cache
from pathlib import Path
from typing import Any

__all__ = ["add_flags", "field_docs", "flag_values"]

_ROLE = re.compile(r":[a-z]+:`~?([^`]+)`")
_NONE = re.compile(r"\bNone: ")


@cache
def field_docs(cls: type) -> dict[str, str]:
    """``{field: docstring}`` of a dataclass: the string literal right under each annotated field."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    return {a.target.id: inspect.cleandoc(b.value.value) for a, b in zip(body, body[1:], strict=False)
            if isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
            and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)}


def _plain(doc: str) -> str:
    """The first paragraph of ``doc`` on one line, without reST markup, with "None: x" (a field left
    unset) read as "default: x" (a flag not given)."""
    text = " ".join(doc.split("\n\n")[0].split())
    text = _ROLE.sub(lambda m: m.group(1).rsplit(".", 1)[-1], text).replace("``", "")
    return _NONE.sub("default: ", text)


def _int_or_str(text: str) -> int | str:
    return int(text) if text.lstrip("-").isdigit() else text


def _argument(annotation: Any) -> dict[str, Any] | None:
    """``add_argument`` keywords for a field of type ``annotation`` (None: no flag for this type)."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        if set(args) == {int, str}:
            return {"type": _int_or_str}
        if len(args) != 1:
            return None
        annotation, args = args[0], list(typing.get_args(args[0]))
    if typing.get_origin(annotation) is typing.Literal:
        args = list(args)
    elif isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        args = [m.value for m in annotation]
    else:
        args = []
    if args:
        return {"choices": args} if len(args) > 1 else None  # one value: nothing to choose
    if annotation is bool:
        return {"action": argparse.BooleanOptionalAction}
    if annotation in (int, float, str, Path):
        return {"type": annotation}
    return None  # a nested configuration


def _default(field: dataclasses.Field[Any]) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory() if field.default_factory is not dataclasses.MISSING else None


def _shown(value: Any) -> str:
    """``value`` as a user types it: 1e9 not 1e+09, on/off for switches."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, enum.Enum):
        value = value.value
    return re.sub(r"e\+?(-?)0*(\d)", r"e\1\2", f"{value:g}") if isinstance(value, float) else str(value)


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    section: str,
    rename: Mapping[str, str] = {},
    skip: Collection[str] = (),
    notes: Mapping[str, str] = {},
    keep_defaults: bool = False,
) -> list[str]:
    """Add a flag for every field of dataclass ``cls`` but those in ``skip``, nested configurations and
    single-valued ``Literal`` fields; returns the options added. Each flag stores into
    ``section.field`` (read back with :func:`flag_values`). ``rename``: field -> flag name without the
    dashes; ``notes``: field -> what its help says in brackets instead of the default.
    ``keep_defaults``: a flag not given holds the field's default (else None, so that it overrides
    nothing, e.g. a configuration file)."""
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    added = []
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.init:
            continue
        kwargs = _argument(hints[field.name])
        if kwargs is None:
            continue
        default = _default(field)
        shown = "" if default is None or default == () else f" (default {_shown(default)})"
        if field.name in notes:
            shown = f" ({notes[field.name]})"
        name = rename.get(field.name, field.name.replace("_", "-"))
        if "choices" not in kwargs and "action" not in kwargs:
            kwargs["metavar"] = name.replace("-", "_").upper()
        help_text = _plain(docs.get(field.name, field.name.replace("_", " "))) + shown
        parser.add_argument(f"--{name}", dest=f"{section}.{field.name}", default=default if keep_defaults else None,
                            help=help_text.replace("%", "%%"), **kwargs)
        added.append(f"--{name}")
    return added


def flag_values(args: argparse.Namespace, section: str, *, given_only: bool = True) -> dict[str, Any]:
    """``{field: value}`` of the flags :func:`add_flags` added for ``section`` (only those given, not
    None, unless ``given_only`` is False)."""
    prefix = f"{section}."
    return {dest[len(prefix):]: value for dest, value in vars(args).items()
            if dest.startswith(prefix) and (value is not None or not given_only)}
