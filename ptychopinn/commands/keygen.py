"""``ptychopinn keygen``: make an Ed25519 key pair for signing bundles (``export --sign``, ``sign``)."""

from __future__ import annotations

import argparse
from pathlib import Path


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the keygen arguments."""
    parser.add_argument("--out", required=True, type=Path,
                        help="private key file to create (mode 0600); the public key goes to OUT.pub")


def run(args: argparse.Namespace) -> int:
    """Write the key pair and say which file goes where."""
    from ptycho_torch.bundle import generate_key_pair
    from ptycho_torch.bundle.signing import key_id, read_key

    private, public = generate_key_pair(args.out)
    print(f"private key {private} (keep it where bundles are exported; sign with --sign {private})")
    print(f"public key  {public} (id {key_id(read_key(public, 'public'))}; give it to servers: "
          f"serve --trusted-key {public}, or PTYCHOPINN_TRUSTED_KEYS={public})")
    return 0
