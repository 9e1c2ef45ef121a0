"""What ``ptychopinn export`` writes and how strictly it checks it: :class:`ExportOptions`, whose fields
are the command's flags (generated, :mod:`ptycho_torch.config_flags`). Light (no torch, no onnx), so
the command's parser is built without them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ptycho_torch.errors import DataContractError, ExportError, InvalidInput
from ptycho_torch.pixel_size import valid_pixel_size
from ptycho_torch.stitching import check_stitch_M

__all__ = ["DEFAULT_OPSET", "FP16_TOLERANCE", "FP32_TOLERANCE", "MIN_OPSET", "ExportOptions"]

DEFAULT_OPSET = 18
MIN_OPSET = 17
FP32_TOLERANCE = 1e-4
"""Largest |ONNX - torch| (and TorchScript) output difference a verified export may show."""
FP16_TOLERANCE = 1e-2
"""The same for ``model.fp16.onnx``."""


@dataclass(frozen=True, kw_only=True)
class ExportOptions:
    """What ``ptychopinn export`` writes and how strictly it checks it."""

    name: str = "ptychopinn"
    """Model name (the Triton model folder): letters, digits, '-' or '_'."""
    version: int = 1
    """Model version (the Triton version folder), >= 1."""
    opset: int = DEFAULT_OPSET
    """ONNX opset, >= 17."""
    fp16: bool = False
    """Also write model.fp16.onnx (float16 weights and compute, float32 inputs and outputs)."""
    zip: bool = False
    """Also write OUT.zip with the same content."""
    max_batch_size: int = 256
    """Triton's max_batch_size in config.pbtxt."""
    tolerance: float = FP32_TOLERANCE
    """Largest |ONNX - torch| and |TorchScript - torch| output difference the verification accepts."""
    fp16_tolerance: float = FP16_TOLERANCE
    """Largest |fp16 ONNX - torch| output difference the verification accepts."""
    stitch_M: int | None = None
    """Central crop used when stitching (None: min(20, N/2))."""
    pixel_size_m: float | None = None
    """Object pixel size of the training data in metres, recorded in the manifest and checked against
    every scan reconstructed (None: the training scan's ``_metadata.pixel_size_m``, else unknown)."""
    sign_key: Path | None = None
    """Ed25519 private key (PEM, from ``ptychopinn keygen``) to sign the bundle with: servers given the
    public key (``--trusted-key``) refuse unsigned or changed bundles (None: unsigned)."""
    bad_pixels: Path | None = None
    """``.npy`` of the detector's bad-pixel mask, (N, N) bool or 0/1 (True = bad), shipped as
    ``bad_pixels.npy`` and masked in every scan the bundle reconstructs (None: none)."""

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_" for c in self.name):
            raise ExportError(f"`name` must be letters, digits, '-' or '_' (a Triton model name), got {self.name!r}")
        if self.version < 1:
            raise ExportError(f"`version` must be an integer >= 1 (a Triton version folder), got {self.version}")
        try:
            valid_pixel_size(self.pixel_size_m, what="`--pixel-size-m`")
            if self.stitch_M is not None:
                check_stitch_M(self.stitch_M, name="--stitch-m")  # N/2 is checked once the model is known
        except (DataContractError, InvalidInput) as error:
            raise ExportError(str(error)) from None
        if self.sign_key is not None:
            from ptycho_torch.bundle.signing import read_key

            read_key(self.sign_key, "private")  # a bad key fails before the export, not after


DEFAULTS = ExportOptions()
"""Every export option at its default (what ``ptychopinn export`` does without flags)."""
