"""The ``ptychopinn`` command: one entry point, one module per subcommand.

The dispatcher sits at the top of the layering (it may import every package). Each subcommand
lives in the package that owns it (``training.cli``, ``export.cli``, ``serving.cli``; the ones that
span packages in :mod:`ptychopinn.commands`) and exposes two functions::

    def configure(parser: argparse.ArgumentParser) -> None: ...   # add its arguments
    def run(args: argparse.Namespace) -> int: ...                  # do the work, return an exit code

Subcommand modules keep their module level light (argparse and the standard library only) and
import heavy dependencies (torch, onnxruntime, uvicorn) inside ``run``, so ``ptychopinn serve``
never imports torch and ``ptychopinn --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from ptycho_torch import __version__
from ptycho_torch.errors import PtychoError

# subcommand name -> (module path, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("ptychopinn.commands.simulate", "simulate a scan from a synthetic or given object"),
    "corpus": ("ptychopinn.commands.corpus", "simulate a sharded training corpus through an instrument's probe"),
    "inspect": ("ptychopinn.commands.inspect", "summarise a scan (NPZ) or a bundle and draw an overview"),
    "train": ("training.cli", "train PtychoPINN with Lightning and write checkpoints"),
    "export": ("export.cli", "export a checkpoint to an ONNX/TorchScript bundle"),
    "serve": ("serving.cli", "serve a bundle over HTTP (Open Inference Protocol + /v1/reconstruct)"),
    "keygen": ("ptychopinn.commands.keygen", "make an Ed25519 key pair for signing bundles"),
    "sign": ("ptychopinn.commands.sign", "sign a bundle folder so servers given the public key accept it"),
    "reconstruct": ("ptychopinn.commands.reconstruct", "reconstruct a scan in-process or via a server"),
    "replay": ("serving.replay", "stream a recorded scan into a live session as a detector would, and measure it"),
    "pva-source": ("serving.pva_command", "feed a live session from EPICS PV Access detector and position channels"),
}


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every available subcommand attached."""
    parser = argparse.ArgumentParser(
        prog="ptychopinn",
        description="Train, export and serve PtychoPINN ptychographic reconstruction.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module_path, help_text) in COMMANDS.items():
        try:
            module = importlib.import_module(module_path)
        except ModuleNotFoundError as error:
            if not module_path.startswith(error.name or "\0"):
                raise
            continue  # subcommand not built yet
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module.configure(sub)
        sub.set_defaults(_run=module.run)
    return parser


#: top-level module -> the extra that installs it, for commands run on a lighter install
EXTRAS: dict[str, str] = {
    "torch": "train", "lightning": "train", "onnxscript": "train", "tensorboard": "train",
    "mlflow": "mlflow", "ptychodus": "ptychodus",
    "onnxruntime": "cpu",  # the core names no onnxruntime build: `cpu` or `gpu` brings one
}


def missing_extra_message(error: ModuleNotFoundError) -> str | None:
    """One line naming the extra to install when ``error`` is a known optional dependency, else None."""
    module = (error.name or "").partition(".")[0]
    extra = EXTRAS.get(module)
    if extra is None:
        return None
    first = "pip install torch==2.13.0, then " if extra == "train" else ""
    other = " (or [gpu] on a CUDA host)" if extra == "cpu" else ""
    return (f"this command needs the {extra!r} extra ({module} is not installed); "
            f"{first}pip install 'ptychopinn-serve[{extra}]'{other}")


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen subcommand.

    Errors (the project's own, and files that cannot be read or written) become a one-line message:
    exit 2, or the error's ``exit_code`` (128 + signal for a training run stopped by a signal); a
    missing optional dependency names the extra to install.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args._run(args) or 0)
    except (PtychoError, OSError) as error:
        message = " ".join(str(error).split())  # one line, even when a library's message has several
        print(f"ptychopinn {args.command}: error: {message}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except ModuleNotFoundError as error:
        missing = missing_extra_message(error)
        if missing is None:
            raise
        print(f"ptychopinn {args.command}: error: {missing}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
