"""``ptychopinn export``: a training checkpoint -> a verified deployment bundle (design.md section 4).

``--checkpoint``, ``--out`` and ``--data`` say what to export; every other flag is a field of
:class:`~export.options.ExportOptions`, generated with its help (:mod:`ptycho_torch.config_flags`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from export.options import ExportOptions
from ptycho_torch.config_flags import add_flags, flag_values

#: field -> flag name, for the flags whose names predate the generated ones
RENAMED = {"sign_key": "sign", "bad_pixels": "bad-pixel-mask", "stitch_M": "stitch-m"}


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the export arguments."""
    parser.add_argument("--checkpoint", required=True, type=Path, help="Lightning checkpoint, e.g. RUN/checkpoints/best.ckpt")
    parser.add_argument("--out", required=True, type=Path, help="bundle directory to create (new or empty)")
    parser.add_argument("--data", type=Path, default=None,
                        help="scan whose patterns verify the graphs (default: the checkpoint's training scan)")
    add_flags(parser.add_argument_group("bundle"), ExportOptions, section="options", rename=RENAMED,
              keep_defaults=True)


def run(args: argparse.Namespace) -> int:
    """Export, verify and print the bundle summary; returns 0."""
    from export.bundle_writer import export_checkpoint
    from ptycho_torch.bundle import summarize

    options = ExportOptions(**flag_values(args, "options", given_only=False))
    bundle = export_checkpoint(args.checkpoint, args.out, data=args.data, options=options)
    print(summarize(bundle))
    if options.zip:
        print(f"zip        {args.out.with_suffix('.zip')}")
    return 0
