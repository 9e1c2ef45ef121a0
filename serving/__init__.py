"""Serving PtychoPINN bundles without torch: bundle loading and validation, the onnxruntime engine
with dynamic batching, the reconstruct pipeline (inference + stitching), the FastAPI app speaking the
Open Inference Protocol and ``/v1/reconstruct``, the Python client, and the Ptychodus adapter."""
