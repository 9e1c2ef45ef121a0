"""The deployment bundle: its manifest schema (:mod:`.schema`) and its reader (:mod:`.reader`).

A bundle is a directory, or the same content as one ``.zip``::

    manifest.json                       the schema, with the sha256 of every other file
    manifest.json.sig                   optional Ed25519 signature of manifest.json (:mod:`.signing`)
    model.onnx                          diffraction (B,C,N,N), scale (B,) -> amplitude, phase (B,C,N,N)
    model.ts                            TorchScript (never opened by the reader: it needs no torch)
    params.json                         the params.cfg snapshot
    probe.npy                           the training probe, complex64, (N,N) or (P,N,N)
    bad_pixels.npy                      optional: the detector's bad-pixel mask, bool (N,N)
    triton/<name>/config.pbtxt          a ready Triton model repository
    triton/<name>/<version>/model.onnx

``export`` writes bundles with these models and ``serving``/Ptychodus read them with
:func:`load_bundle`, so writer and readers share one schema. The manifest's ``inputs``/``outputs``
(:func:`tensor_specs`) are the graph signature every check, the OIP metadata and the Triton config
(:mod:`.triton`) are built from; :mod:`.dtypes` is the one table of element types. numpy, pydantic and onnx (plus
onnxruntime to check it can load the graph, and ``cryptography`` for signatures).
"""

from ptycho_torch.bundle.reader import MAX_ZIP_BYTES, PICKLE_SUFFIXES, Bundle, load_bundle, summarize
from ptycho_torch.bundle.schema import (
    BAD_PIXELS_FILE,
    BATCH_DIM,
    COORDINATE_CONVENTION,
    FORMAT,
    FORMAT_VERSION,
    INPUT_NAMES,
    MANIFEST_FILE,
    NORMALIZATION_RULE,
    ONNX_FILE,
    OUTPUT_NAMES,
    PARAMS_FILE,
    PROBE_FILE,
    REQUIRED_FILES,
    TORCHSCRIPT_FILE,
    EngineDeviation,
    Manifest,
    Normalization,
    Provenance,
    Signature,
    TensorSpec,
    TrainingRecord,
    Verification,
    tensor_specs,
    triton_config_path,
    triton_model_path,
)
from ptycho_torch.bundle.signing import SIGNATURE_FILE, TRUSTED_KEYS_ENV, generate_key_pair, sign_bundle

__all__ = [
    "BAD_PIXELS_FILE", "BATCH_DIM", "COORDINATE_CONVENTION", "FORMAT", "FORMAT_VERSION", "INPUT_NAMES", "MANIFEST_FILE",
    "MAX_ZIP_BYTES", "NORMALIZATION_RULE", "ONNX_FILE", "OUTPUT_NAMES", "PARAMS_FILE", "PICKLE_SUFFIXES",
    "PROBE_FILE", "REQUIRED_FILES", "SIGNATURE_FILE", "TORCHSCRIPT_FILE", "TRUSTED_KEYS_ENV", "Bundle",
    "EngineDeviation", "Manifest", "Normalization", "Provenance", "Signature", "TensorSpec", "TrainingRecord",
    "Verification", "generate_key_pair", "load_bundle", "sign_bundle", "summarize", "tensor_specs", "triton_config_path",
    "triton_model_path",
]
