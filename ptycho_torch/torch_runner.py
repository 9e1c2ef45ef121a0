"""The torch runner: a generator as a :class:`~ptycho_torch.pipeline.Runner`, so an in-process torch
model reconstructs through the same pipeline as an ONNX bundle or a remote server.

``TorchRunner(generator, training_scale=...)`` answers ``infer(diffraction (B, C, N, N), scale (B,))``
with ``(amplitude, phase)`` ``(B, C, N, N)`` float32 in batches of ``batch_size`` under
``torch.inference_mode``; its :attr:`~TorchRunner.model` is the
:class:`~ptycho_torch.model_facts.ModelFacts` the pipeline reads (N, gridsize, stitch_M, neighbour
count, training scale, training probe). :meth:`TorchRunner.from_checkpoint` (a ``.ckpt``) and
:meth:`TorchRunner.from_record` (the generator, record and probe a ``wts.h5.zip`` loads) fill those
facts from the checkpoint, probe included, without Lightning and without touching ``params.cfg``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from ptycho_torch.checkpoint import CheckpointRecord, load_generator
from ptycho_torch.errors import ConfigError
from ptycho_torch.grouping import default_neighbor_count
from ptycho_torch.model import ObjectGenerator
from ptycho_torch.model_facts import ModelFacts
from ptycho_torch.stitching import default_stitch_M

__all__ = ["TorchRunner"]


class TorchRunner:
    """Batched inference of an :class:`ObjectGenerator` on its own device (eval mode, no autograd)."""

    def __init__(self, generator: ObjectGenerator, *, training_scale: float,
                 probe: npt.ArrayLike | None = None, stitch_M: int | None = None,
                 neighbor_count: int | None = None, bad_pixels: npt.ArrayLike | None = None,
                 pixel_size_m: float | None = None, batch_size: int = 64, name: str = "torch") -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"`batch_size` must be a positive integer, got {batch_size!r}")
        config = generator.config
        self.generator = generator.eval()
        self.batch_size = batch_size
        self.model = ModelFacts(
            name=name, N=config.N, gridsize=config.gridsize, training_scale=float(training_scale),
            stitch_M=default_stitch_M(config.N) if stitch_M is None else stitch_M,
            neighbor_count=default_neighbor_count(config.channels) if neighbor_count is None else neighbor_count,
            probe=None if probe is None else np.asarray(probe, np.complex64).reshape(-1, config.N, config.N),
            bad_pixels=None if bad_pixels is None else np.asarray(bad_pixels, bool), pixel_size_m=pixel_size_m)

    @classmethod
    def from_checkpoint(cls, path: str | Path, *, batch_size: int = 64, name: str = "torch") -> TorchRunner:
        """A runner for a Lightning checkpoint (see :func:`~ptycho_torch.checkpoint.load_generator`),
        its training probe included. Needs torch, not Lightning; ``params.cfg`` is left as it is."""
        return cls.from_record(*load_generator(path), batch_size=batch_size, name=name)

    @classmethod
    def from_record(cls, generator: ObjectGenerator, record: CheckpointRecord, probe: npt.ArrayLike, *,
                    batch_size: int = 64, name: str = "torch") -> TorchRunner:
        """A runner for a loaded checkpoint: its generator, its record (training scale, neighbour count)
        and its normalised training probe ``(P, N, N)`` complex64 (a ``wts.h5.zip`` model loads the same three)."""
        return cls(generator, training_scale=record.training_scale, probe=probe,
                   neighbor_count=record.training.neighbor_count, pixel_size_m=record.pixel_size_m,
                   batch_size=batch_size, name=name)

    def infer(self, diffraction: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]
              ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """``amplitude, phase`` ``(B, C, N, N)`` float32 for raw amplitudes ``(B, C, N, N)`` and ``scale`` ``(B,)``."""
        device = next(self.generator.parameters()).device
        amplitude = np.empty(diffraction.shape, np.float32)
        phase = np.empty(diffraction.shape, np.float32)
        with torch.inference_mode():
            for start in range(0, len(diffraction), self.batch_size):  # batches, not patterns
                batch = slice(start, start + self.batch_size)
                x = torch.from_numpy(np.ascontiguousarray(diffraction[batch], np.float32)).to(device)
                s = torch.from_numpy(np.ascontiguousarray(scale[batch], np.float32)).to(device)
                a, p = self.generator(x, s)
                amplitude[batch], phase[batch] = a.float().cpu().numpy(), p.float().cpu().numpy()
        return amplitude, phase
