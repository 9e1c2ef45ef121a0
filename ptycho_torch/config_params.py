"""Placeholder for upstream PtychoPINN's ``ptycho_torch.config_params`` (imported by Ptychodus'
built-in "PtychoPINN-Torch" library before training); fails with the message of ``ptycho_torch.api``."""

import ptycho_torch.api  # noqa: F401  (always raises UnsupportedAPIError)
