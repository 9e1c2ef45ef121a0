"""Placeholder for upstream PtychoPINN's ``ptycho_torch.api``, which this project does not provide.

Stock Ptychodus 1.7 lists its built-in "PtychoPINN-Torch" library whenever modules named
``ptycho_torch`` and ``lightning`` are importable, which is true once ptychopinn-serve is installed.
Using that library imports ``ptycho_torch.api.base_api`` (in the reconstruct child process) or
``ptycho_torch.config_params`` (before training). Both land here and fail at once with a message
that names this project's own Ptychodus reconstructors, instead of an obscure ``ModuleNotFoundError``.
"""

from __future__ import annotations

from ptycho_torch.errors import UnsupportedAPIError

MESSAGE = (
    "Ptychodus' built-in `PtychoPINN-Torch` library must run upstream PtychoPINN's `ptycho_torch.api`, "
    "got ptychopinn-serve's `ptycho_torch`, which does not provide that API; choose this project's "
    "reconstructors instead: `PtychoPINN-Serve` > `ONNX` (a bundle .zip, settings.ini "
    "`[Processing] Algorithm = ptychopinn-serve_onnx`) or `PtychoPINN-Serve` > `HTTP` (a `ptychopinn serve` "
    "URL, `Algorithm = ptychopinn-serve_http`); see the README section \"Ptychodus\""
)

raise UnsupportedAPIError(MESSAGE, name=__name__)
