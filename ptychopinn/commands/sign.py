"""``ptychopinn sign``: sign an existing bundle folder with an Ed25519 private key."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the sign arguments."""
    parser.add_argument("bundle", type=Path, help="bundle folder written by `ptychopinn export`")
    parser.add_argument("--key", required=True, type=Path, help="Ed25519 private key from `ptychopinn keygen`")


def run(args: argparse.Namespace) -> int:
    """Validate the bundle, write manifest.json.sig, and check the signature with the key's public half."""
    from ptycho_torch.bundle import load_bundle, sign_bundle
    from ptycho_torch.bundle.signing import key_id, read_key
    from ptycho_torch.errors import ConfigError

    if not args.bundle.is_dir():
        raise ConfigError(f"`bundle` must be a bundle folder, got {args.bundle}; sign the folder, then zip it "
                          "(or export again with --zip --sign KEY)")
    key = read_key(args.key, "private")
    load_bundle(args.bundle, trusted_keys=())  # sign only what is a valid bundle
    path = sign_bundle(args.bundle, args.key)
    print(f"signed {args.bundle} with key id {key_id(key.public_key())}: {path}")
    return 0
