"""Optional bundle signing: a reader given trusted public keys refuses unsigned bundles, bundles
changed after signing (a swapped model with an updated manifest) and bundles signed by another
key; `keygen`, `sign` and `serve --trusted-key` in one line each."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import onnx
import pytest
from oracle import rehash, write_oracle_bundle, zip_bundle

from ptycho_torch.bundle import (
    SIGNATURE_FILE,
    TRUSTED_KEYS_ENV,
    generate_key_pair,
    load_bundle,
    sign_bundle,
    summarize,
)
from ptycho_torch.bundle.signing import key_id, read_key
from ptycho_torch.errors import BundleError, ConfigError
from ptychopinn.cli import main
from serving.cli import require_signatures


@pytest.fixture(autouse=True)
def _no_keys_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TRUSTED_KEYS_ENV, "")  # restored after the test, also when serve/require_signatures set it


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path, str]:
    (tmp_path / "keys").mkdir()
    private, public = generate_key_pair(tmp_path / "keys" / "site.key")
    return private, public, key_id(read_key(public, "public"))


@pytest.fixture
def signed(tmp_path: Path, keys) -> Path:
    root = write_oracle_bundle(tmp_path / "signed")
    sign_bundle(root, keys[0])
    return root


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path: Path, capsys) -> None:
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 0
    assert stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o600
    assert (tmp_path / "k.pub").read_text().startswith("-----BEGIN PUBLIC KEY-----")
    out = capsys.readouterr().out
    assert f"serve --trusted-key {tmp_path / 'k.pub'}" in out and f"--sign {tmp_path / 'k'}" in out
    assert main(["keygen", "--out", str(tmp_path / "k")]) == 2
    assert capsys.readouterr().err.strip() == (f"ptychopinn keygen: error: `--out` {tmp_path / 'k'} already exists; "
                                               "choose another name (keys are never overwritten)")


def test_a_signed_bundle_verifies_with_its_key(signed: Path, keys) -> None:
    _, public, kid = keys
    bundle = load_bundle(signed, trusted_keys=[public])
    assert bundle.signed and bundle.signed_by == kid
    assert f"signature  verified, trusted key {kid}" in summarize(bundle)
    record = json.loads((signed / SIGNATURE_FILE).read_text())
    assert record["algorithm"] == "ed25519" and record["key_id"] == kid
    unverified = load_bundle(signed)  # no trusted keys: any bundle, the signature only reported
    assert unverified.signed and unverified.signed_by is None
    assert "signature  present, not verified (no trusted keys given)" in summarize(unverified)


def test_the_environment_variable_and_serve_flag_make_every_load_require_a_signature(
        tmp_path: Path, signed: Path, keys, monkeypatch: pytest.MonkeyPatch) -> None:
    unsigned = write_oracle_bundle(tmp_path / "unsigned")
    require_signatures([keys[1]])  # what `serve --trusted-key` does before loading anything
    assert load_bundle(signed).signed_by == keys[2]
    with pytest.raises(BundleError, match=rf"unsigned bundle refused: only bundles signed by a trusted key are "
                                          rf"accepted \(trusted key ids \['{keys[2]}'\]\)"):
        load_bundle(unsigned)


def test_unsigned_bundles_are_refused_when_keys_are_trusted(tmp_path: Path, keys) -> None:
    root = write_oracle_bundle(tmp_path / "unsigned")
    with pytest.raises(BundleError) as caught:
        load_bundle(root, trusted_keys=[keys[1]])
    assert str(caught.value) == (f"{root}: unsigned bundle refused: only bundles signed by a trusted key are "
                                 f"accepted (trusted key ids ['{keys[2]}']); sign it with `ptychopinn sign BUNDLE "
                                 "--key KEY` (or export --sign KEY) using a trusted key")


def test_a_swapped_model_with_an_updated_manifest_is_refused(signed: Path, keys) -> None:
    model = onnx.load(signed / "model.onnx")
    model.graph.initializer[1].float_data[0] = 0.5  # another model: phase factor 0.25 -> 0.5
    onnx.save(model, signed / "model.onnx")
    rehash(signed)  # checksums consistent again: only the signature can tell
    with pytest.raises(BundleError, match=rf"manifest\.json\.sig: signature does not verify with any trusted key "
                                          rf"\(signed by key id '{keys[2]}', trusted \['{keys[2]}'\]\): the bundle "
                                          r"was changed after signing"):
        load_bundle(signed, trusted_keys=[keys[1]])


def test_a_bundle_signed_by_another_key_is_refused_and_a_malformed_signature_too(signed: Path, keys,
                                                                                  tmp_path: Path) -> None:
    other_private, other_public = generate_key_pair(tmp_path / "other.key")
    other = key_id(read_key(other_public, "public"))
    sign_bundle(signed, other_private)
    with pytest.raises(BundleError, match=rf"signed by key id '{other}', trusted \['{keys[2]}'\]"):
        load_bundle(signed, trusted_keys=[keys[1]])
    assert load_bundle(signed, trusted_keys=[keys[1], other_public]).signed_by == other
    (signed / SIGNATURE_FILE).write_text('{"algorithm": "ed25519", "signature": "not base64!"}')
    with pytest.raises(BundleError, match=r"manifest\.json\.sig: malformed signature file"):
        load_bundle(signed, trusted_keys=[keys[1]])


def test_a_signed_zip_verifies(signed: Path, keys, tmp_path: Path) -> None:
    bundle = load_bundle(zip_bundle(signed, tmp_path / "signed.zip"), trusted_keys=[keys[1]])
    assert bundle.signed_by == keys[2] and bundle.source == tmp_path / "signed.zip"


def test_sign_command_and_serve_flag_in_one_line(tmp_path: Path, keys, capsys) -> None:
    root = write_oracle_bundle(tmp_path / "b")
    assert main(["serve", "--port", "0", "--bundle", str(root), "--trusted-key", str(keys[1])]) == 2
    assert capsys.readouterr().err.strip().startswith(f"ptychopinn serve: error: {root}: unsigned bundle refused")
    assert main(["serve", "--port", "0", "--bundle", str(root), "--trusted-key", str(tmp_path / "none.pub")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ptychopinn serve: error: public key {tmp_path / 'none.pub'} cannot be read")
    assert "\n" not in err
    assert main(["sign", str(root), "--key", str(keys[0])]) == 0
    assert f"signed {root} with key id {keys[2]}" in capsys.readouterr().out
    assert load_bundle(root, trusted_keys=[keys[1]]).signed_by == keys[2]
    assert main(["sign", str(root), "--key", str(keys[1])]) == 2  # the public half cannot sign
    assert "private key" in capsys.readouterr().err
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_public = tmp_path / "rsa.pub"
    rsa_public.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    with pytest.raises(ConfigError, match=rf"public key {rsa_public} must be an Ed25519 key, got "):
        read_key(rsa_public, "public")
