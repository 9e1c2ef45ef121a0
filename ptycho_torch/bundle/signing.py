"""Bundle signatures: an Ed25519 signature of ``manifest.json`` in ``manifest.json.sig``.

The manifest lists the sha256 of every other file and the reader refuses unlisted files, so one
signature over the manifest's bytes covers the whole bundle. Checksums alone do not stop a swapped
model with an updated manifest; a signature does, once the reader is told which public keys to
trust (``trusted_keys``, or the ``PTYCHOPINN_TRUSTED_KEYS`` environment variable: key files
separated by ``:``). Without trusted keys a signature is reported but not required.

Keys are PEM files (PKCS#8 private key, SubjectPublicKeyInfo public key) made by
``ptychopinn keygen``; ``ptychopinn export --sign KEY`` and ``ptychopinn sign BUNDLE --key KEY``
write the signature. Cryptography: the ``cryptography`` package (OpenSSL's Ed25519).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal, overload

from ptycho_torch.errors import BundleError, ConfigError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

SIGNATURE_FILE: Final = "manifest.json.sig"
TRUSTED_KEYS_ENV: Final = "PTYCHOPINN_TRUSTED_KEYS"
ALGORITHM: Final = "ed25519"


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short fingerprint of a public key: the first 16 hex digits of sha256 of its raw bytes."""
    from cryptography.hazmat.primitives import serialization

    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_key_pair(private_path: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 private key (``private_path``, mode 0600) and its public key
    (``private_path`` + ``.pub``); refuses to overwrite either. Returns both paths."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if path.exists():
            raise ConfigError(f"`--out` {path} already exists; choose another name (keys are never overwritten)")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


@overload
def read_key(path: Path, kind: Literal["private"]) -> Ed25519PrivateKey: ...
@overload
def read_key(path: Path, kind: Literal["public"]) -> Ed25519PublicKey: ...
def read_key(path: Path, kind: Literal["private", "public"]) -> Ed25519PrivateKey | Ed25519PublicKey:
    """The Ed25519 ``kind`` ("private" or "public") key in the PEM file ``path``; ConfigError if it is not one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

    try:
        data = Path(path).read_bytes()
        key = (serialization.load_pem_private_key(data, password=None) if kind == "private"
               else serialization.load_pem_public_key(data))
    except (OSError, ValueError, TypeError) as error:
        raise ConfigError(f"{kind} key {path} cannot be read as an unencrypted PEM key ({error}); "
                          "make one with `ptychopinn keygen`") from None
    expected = Ed25519PrivateKey if kind == "private" else Ed25519PublicKey
    if not isinstance(key, expected):
        raise ConfigError(f"{kind} key {path} must be an Ed25519 key, got {type(key).__name__}; "
                          "make one with `ptychopinn keygen`")
    return key


def sign_bundle(root: str | Path, private_key: str | Path) -> Path:
    """Sign the bundle directory ``root`` (its ``manifest.json``) with ``private_key``; returns the
    signature file."""
    root = Path(root)
    key = read_key(Path(private_key), "private")
    manifest = (root / "manifest.json").read_bytes()
    record = {"algorithm": ALGORITHM, "key_id": key_id(key.public_key()),
              "signature": base64.b64encode(key.sign(manifest)).decode("ascii")}
    path = root / SIGNATURE_FILE
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


def trusted_keys_from_env() -> tuple[Path, ...]:
    """The public key files named by ``PTYCHOPINN_TRUSTED_KEYS`` (``:``-separated; empty: none)."""
    return tuple(Path(p) for p in os.environ.get(TRUSTED_KEYS_ENV, "").split(os.pathsep) if p.strip())


def load_public_keys(paths: Sequence[str | Path]) -> dict[str, Ed25519PublicKey]:
    """``{key_id: public key}`` of the given PEM files; a missing or foreign file is a ConfigError."""
    keys = [read_key(Path(p), "public") for p in paths]
    return {key_id(k): k for k in keys}


def verify_signature(root: Path, manifest_bytes: bytes, trusted: Sequence[str | Path], *, source: Path) -> str:
    """Check ``manifest.json.sig`` against the ``trusted`` public keys; return the key id that signed.

    Raises :class:`BundleError` (one line) when the bundle is unsigned, the signature file is
    malformed, or no trusted key verifies it.
    """
    from cryptography.exceptions import InvalidSignature

    keys = load_public_keys(trusted)
    fix = "sign it with `ptychopinn sign BUNDLE --key KEY` (or export --sign KEY) using a trusted key"
    path = root / SIGNATURE_FILE
    if not path.is_file():
        raise BundleError(f"{source}: unsigned bundle refused: only bundles signed by a trusted key are accepted "
                          f"(trusted key ids {sorted(keys)}); {fix}")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
        signature = base64.b64decode(record["signature"], validate=True)
        if record.get("algorithm") != ALGORITHM:
            raise ValueError(f"algorithm {record.get('algorithm')!r}, expected {ALGORITHM!r}")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise BundleError(f"{SIGNATURE_FILE}: malformed signature file ({error}); {fix}") from None
    for kid, key in keys.items():
        try:
            key.verify(signature, manifest_bytes)
        except InvalidSignature:
            continue
        return kid
    raise BundleError(f"{SIGNATURE_FILE}: signature does not verify with any trusted key (signed by key id "
                      f"{record.get('key_id')!r}, trusted {sorted(keys)}): the bundle was changed after signing "
                      f"or signed by another key; {fix}")
