"""The numpy-only modules must not import torch (serving hosts have no torch)."""

from __future__ import annotations

import subprocess
import sys

NUMPY_ONLY = [
    "ptycho_torch.config", "ptycho_torch.params", "ptycho_torch.data", "ptycho_torch.grouping",
    "ptycho_torch.normalization", "ptycho_torch.simulation", "ptycho_torch.checksums", "ptycho_torch.bundle", "ptycho_torch.checkpoint",
    "ptycho_torch.pipeline", "ptycho_torch.stitching",
    "ptychopinn.commands.simulate", "ptychopinn.commands.inspect", "ptycho_torch.data_fit",
    "ptycho_torch.refinement",
]

PROBE = """
import importlib, sys
class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError("torch import blocked by test_imports")
sys.meta_path.insert(0, _Block())
for module in sys.argv[1:]:
    importlib.import_module(module)
assert "torch" not in sys.modules
print("ok")
"""


def test_numpy_only_modules_import_without_torch():
    result = subprocess.run([sys.executable, "-c", PROBE, *NUMPY_ONLY], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_the_probe_really_blocks_torch():
    result = subprocess.run([sys.executable, "-c", PROBE, "torch"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "torch import blocked" in result.stderr
