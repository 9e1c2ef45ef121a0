"""Flags generated from configuration dataclasses: every field gets a flag with its docstring as help,
typed from its annotation, so a new field needs no hand edit of a command."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Literal

import pytest

from ptycho_torch.config_flags import _plain, add_flags, field_docs, flag_values


class Colour(StrEnum):
    RED = "red"
    BLUE = "blue"


@dataclass(frozen=True, kw_only=True)
class Knobs:
    """A configuration the generator has never seen."""

    count: int = 3
    """How many; at least 1."""
    rate: float = 1e9
    """Photons per second (100% of them)."""
    where: Path | None = None
    """Output folder (None: the current one).

    A second paragraph stays out of the help."""
    mode: Literal["fast", "slow"] = "fast"
    """``fast`` or ``slow`` (see :class:`~ptycho_torch.config.ModelConfig`)."""
    fixed: Literal["only"] = "only"
    """One value: nothing to choose, no flag."""
    colour: Colour = Colour.RED
    """Paint."""
    on: bool = True
    """Switch it on."""
    devices: int | str = 1
    """A count or a name."""
    name: str = "x"
    nested: dict = field(default_factory=dict)
    """A nested mapping: no flag."""


def _parser(**options) -> tuple[argparse.ArgumentParser, list[str]]:
    parser = argparse.ArgumentParser()
    added = add_flags(parser, Knobs, section="knobs", **options)
    return parser, added


def test_a_new_dataclass_gets_one_typed_flag_per_field_with_its_docstring() -> None:
    parser, added = _parser(rename={"count": "n"})
    assert added == ["--n", "--rate", "--where", "--mode", "--colour", "--on", "--devices", "--name"]
    helps = {a.option_strings[0]: a.help for a in parser._actions if a.option_strings}
    assert helps["--n"] == "How many; at least 1. (default 3)"
    assert helps["--rate"] == "Photons per second (100%% of them). (default 1e9)"  # %% for argparse
    assert helps["--where"] == "Output folder (default: the current one)."
    assert helps["--mode"] == "fast or slow (see ModelConfig). (default fast)"
    assert helps["--on"] == "Switch it on. (default on)" and helps["--name"] == "name (default x)"
    args = parser.parse_args(["--n", "5", "--rate", "2.5", "--where", "out", "--mode", "slow", "--colour", "blue",
                              "--no-on", "--devices", "auto"])
    assert flag_values(args, "knobs") == {"count": 5, "rate": 2.5, "where": Path("out"), "mode": "slow",
                                          "colour": "blue", "on": False, "devices": "auto"}
    assert parser.parse_args(["--devices", "-1"]).__dict__["knobs.devices"] == -1
    assert flag_values(parser.parse_args([]), "knobs") == {}  # nothing given overrides nothing
    with pytest.raises(SystemExit):
        parser.parse_args(["--mode", "medium"])
    assert "usage" in parser.format_help() and "1e9" in parser.format_help()


def test_defaults_kept_skips_notes_and_enum_choices() -> None:
    parser, added = _parser(skip={"rate"}, keep_defaults=True, notes={"where": "required"})
    assert "--rate" not in added
    values = flag_values(parser.parse_args([]), "knobs", given_only=False)
    defaults = {f.name: getattr(Knobs(), f.name) for f in dataclasses.fields(Knobs) if f.name in values}
    assert values == defaults
    actions = {a.dest: a for a in parser._actions}
    assert actions["knobs.where"].help == "Output folder (default: the current one). (required)"
    assert actions["knobs.colour"].choices == ["red", "blue"]  # read from the enum, listed nowhere else
    assert actions["knobs.colour"].help == "Paint. (default red)" and actions["knobs.name"].choices is None
    with pytest.raises(SystemExit):
        parser.parse_args(["--colour", "green"])


def test_field_docs_and_help_text() -> None:
    docs = field_docs(Knobs)
    assert "name" not in docs and docs["where"].endswith("stays out of the help.")
    assert _plain(docs["where"]) == "Output folder (default: the current one)."
