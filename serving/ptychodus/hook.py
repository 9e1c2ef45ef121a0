"""Place the plugin hook where the stock ``ptychodus`` command finds it, for editable installs too.

Ptychodus loads every module of its namespace package ``ptychodus.plugins``, whose only folder is the
installed ``ptychodus/plugins``. A regular (wheel) install of this project puts
``ptychodus/plugins/ptychopinn_serve.py`` there; an editable install (``pip install -e``, what ``make``
does) cannot, so the stock ``ptychodus`` and ``ptychodus -b`` would silently lack the reconstructors.
``python -m serving.ptychodus.hook install`` copies the hook file into that folder (``make`` runs it);
``remove`` takes it out again (run it before ``pip uninstall`` of an editable install). The hook is
harmless if this project is later removed: it logs one line and Ptychodus starts without it.
"""

from __future__ import annotations

import argparse
import filecmp
import shutil
import sys
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

__all__ = ["HOOK_NAME", "hook_source", "hook_target", "install_hook", "main", "remove_hook"]

HOOK_NAME = "ptychopinn_serve.py"


def hook_source() -> Path:
    """This project's hook module (in the source tree, or already in place for a wheel install)."""
    return Path(__file__).resolve().parents[2] / "ptychodus" / "plugins" / HOOK_NAME


def hook_target() -> Path | None:
    """Where the installed Ptychodus looks for it, or None if Ptychodus is not installed."""
    spec = find_spec("ptychodus")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).resolve().parent / "plugins" / HOOK_NAME


def install_hook() -> str:
    """Copy the hook into Ptychodus' plugin folder unless an identical one is there; returns what it did."""
    target = hook_target()
    if target is None:
        return "Ptychodus is not installed (the `ptychodus` extra); no hook needed"
    source = hook_source()
    if target.exists() and (target.samefile(source) or filecmp.cmp(source, target, shallow=False)):
        return f"the Ptychodus hook is in place: {target}"
    shutil.copyfile(source, target)
    return f"installed the Ptychodus hook: {target}"


def remove_hook() -> str:
    """Delete the copied hook (never the one a wheel install owns); returns what it did."""
    target = hook_target()
    if target is None or not target.exists():
        return "no Ptychodus hook to remove"
    if target.samefile(hook_source()):
        return f"the hook belongs to this (regular) install; `pip uninstall ptychopinn-serve` removes it: {target}"
    target.unlink()
    return f"removed the Ptychodus hook: {target}"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.ptychodus.hook", description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("install", "remove"))
    args = parser.parse_args(argv)
    try:
        print(install_hook() if args.action == "install" else remove_hook())
    except OSError as error:
        print(f"error: could not {args.action} the Ptychodus hook: {error}; check write access to the "
              "environment's site-packages", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
