"""``ptychopinn export``: a training checkpoint -> a verified deployment bundle (design.md section 4)."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the export arguments."""
    parser.add_argument("--checkpoint", required=True, type=Path, help="Lightning checkpoint, e.g. RUN/checkpoints/best.ckpt")
    parser.add_argument("--out", required=True, type=Path, help="bundle directory to create (new or empty)")
    parser.add_argument("--zip", action="store_true", help="also write OUT.zip with the same content")
    parser.add_argument("--name", default="ptychopinn", help="model name (Triton model folder); default ptychopinn")
    parser.add_argument("--version", type=int, default=1, help="model version (Triton version folder); default 1")
    parser.add_argument("--opset", type=int, default=18, help="ONNX opset, >= 17; default 18")
    parser.add_argument("--fp16", action="store_true",
                        help="also write model.fp16.onnx (float16 weights and compute, float32 inputs/outputs)")
    parser.add_argument("--data", type=Path, default=None,
                        help="scan whose patterns verify the graphs (default: the checkpoint's training scan)")
    parser.add_argument("--max-batch-size", type=int, default=256, help="Triton max_batch_size; default 256")
    parser.add_argument("--sign", type=Path, default=None, metavar="KEY",
                        help="sign the bundle with this Ed25519 private key (from `ptychopinn keygen`): servers "
                             "given the public key (--trusted-key) refuse unsigned or changed bundles")
    parser.add_argument("--pixel-size-m", type=float, default=None,
                        help="object pixel size of the training data in metres, recorded in the manifest and "
                             "checked against every scan reconstructed (default: the training scan's "
                             "_metadata.pixel_size_m, else unknown)")
    parser.add_argument("--bad-pixel-mask", type=Path, default=None,
                        help=".npy (N, N) bool mask of the detector's bad pixels (True = bad), shipped in the "
                             "bundle and masked in every scan it reconstructs (default: none)")


def run(args: argparse.Namespace) -> int:
    """Export, verify and print the bundle summary; returns 0."""
    from export.bundle_writer import ExportOptions, export_checkpoint
    from ptycho_torch.bundle import summarize

    options = ExportOptions(name=args.name, version=args.version, opset=args.opset, fp16=args.fp16, zip=args.zip,
                            max_batch_size=args.max_batch_size, pixel_size_m=args.pixel_size_m,
                            sign_key=args.sign, bad_pixels=args.bad_pixel_mask)
    bundle = export_checkpoint(args.checkpoint, args.out, data=args.data, options=options)
    print(summarize(bundle))
    if args.zip:
        print(f"zip        {args.out.with_suffix('.zip')}")
    return 0
