"""Checkpoint -> deployment bundle: ONNX and TorchScript graphs, parity verification against the
eager model, the manifest with checksums, and the Triton model-repository layout;
``ptychopinn export``."""
