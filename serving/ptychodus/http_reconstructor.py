"""``PtychoPINN-Serve`` > ``HTTP``: reconstruct on a remote ``ptychopinn serve`` (e.g. a GPU node).

The scan goes out in chunks of ``ChunkSize`` patterns. For single-pattern models (gridsize 1) the
chunks stream into a live session (:mod:`serving.sessions`) on the server, which infers and stitches
them as they arrive; after each chunk the object so far comes back and is yielded with the progress,
so Ptychodus shows the object growing, and Stop closes the session at once. The normalisation is the
whole scan's (computed here, where the whole scan is, and given to the session explicitly).

For gridsize > 1 (neighbour groups need the whole scan, which a session does not have) each chunk
runs through the same :func:`ptycho_torch.pipeline.reconstruct` as the ONNX reconstructor, with the
model batches sent to the server's Open Inference Protocol ``infer`` endpoint and the same explicit
scale; chunks are merged on the object grid by their coverage weights and neighbour groups are drawn
within a chunk. After every chunk the object so far is yielded, so Ptychodus can stop between chunks.

With ``RefineIterations`` (a number, or ``auto``: until the data fit stops improving) the object is then
refined against the scan with its probe in this process (numpy,
:func:`~serving.ptychodus.adapter.refine_outputs`), one progress step and one chance to stop per
iteration, with the probe (``RefineProbe``) and the positions (``RefinePositions``) when asked;
``RefineStart`` flat skips the server altogether.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Generator, Iterator

import numpy as np
from ptychodus.api.reconstruct import ReconstructInput, Reconstructor, ReconstructOutput

from ptycho_torch.choices import RefineStart
from ptycho_torch.errors import ConfigError
from ptycho_torch.model_facts import ModelFacts
from ptycho_torch.pipeline import reconstruct
from ptycho_torch.plan import ReconstructOptions, resolve
from serving.client import Client, LiveSession, RemoteRunner, ServerUnreachable
from serving.errors import ModelNotFound, ServingError
from serving.ptychodus.adapter import ObjectGrid, Scan, check_model_geometry, refine_outputs, scan_from_input
from serving.ptychodus.reporting import reported
from serving.ptychodus.settings import GROUP, PtychoPINNServeSettings

__all__ = ["HttpReconstructor"]

log = logging.getLogger(__name__)


class HttpReconstructor(Reconstructor):
    """Reconstruct on ``[PtychoPINNServe] ServerURL`` (``ServerModel``, ``ApiToken``, ``TimeoutSeconds``)."""

    def __init__(self, settings: PtychoPINNServeSettings) -> None:
        self._settings = settings
        self._chunks = 1

    @property
    def name(self) -> str:
        return "HTTP"

    def get_progress_goal(self) -> int:
        return self._chunks + self._settings.refine_steps()

    def _client(self) -> tuple[Client, str]:
        url = self._settings.server_url.get_value().strip()
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"`[{GROUP}] ServerURL` must be an http(s):// URL, got {url!r}; set it to the address "
                              "of `ptychopinn serve`, e.g. http://gpu-node:8000")
        token = self._settings.api_token.get_value().strip() or None
        return Client(url, token=token, timeout_s=self._settings.timeout_s.get_value()), url

    def _model(self, client: Client, url: str, name: str) -> ModelFacts:
        """The served model; connection problems become one clear :class:`ConfigError`."""
        if not name:
            raise ConfigError(f"`[{GROUP}] ServerModel` must name the model served at {url}, got nothing; "
                              "`ptychopinn serve` logs it at start-up (the bundle's name)")
        try:
            return client.model_facts(name)
        except ServerUnreachable as error:
            raise ConfigError(f"`[{GROUP}] ServerURL` must reach a running `ptychopinn serve`, got {url}: "
                              f"{error}") from None
        except ModelNotFound as error:
            raise ConfigError(f"`[{GROUP}] ServerModel` must be a model served at {url}: {error}") from None

    def reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        return reported(self._reconstruct(parameters), "Reconstruction")

    def _reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        scan = scan_from_input(parameters)
        options = self._settings.options()
        grid = ObjectGrid(parameters)
        self._chunks = 0  # a flat start sends nothing: its progress is the iterations alone
        if options.refine_start == RefineStart.NETWORK:
            grid = yield from self._network(parameters, scan, options)
        yield from refine_outputs(grid, scan, options, progress=self._chunks)

    def _network(self, parameters: ReconstructInput, scan: Scan, options: ReconstructOptions
                 ) -> Generator[ReconstructOutput, None, ObjectGrid]:
        """The network's object, chunk by chunk; returns the final :class:`ObjectGrid`."""
        client, url = self._client()
        with client:
            name = self._settings.server_model.get_value().strip()
            model = self._model(client, url, name)
            check_model_geometry(scan, N=model.N, gridsize=model.gridsize, model=f"{name} at {url}",
                                 pixel_size_m=model.pixel_size_m)
            # the pipeline's scale rule on the whole scan (the model's bad pixels inpainted, glitch frames left
            # out), sent with every chunk; refinement runs here, on the grid
            plan = resolve(model, options.network_only())
            scale = plan.network_scale(plan.prepare(scan.amplitudes, scan.positions))
            if model.gridsize == 1:
                return (yield from self._stream(client, name, scan, scale, parameters))
            runner = RemoteRunner(model, client)
            per_chunk = ReconstructOptions(scale=scale)  # the whole scan's, the same for every chunk
            size = self._settings.chunk_size.get_value()
            starts = range(0, len(scan.amplitudes), size)
            self._chunks = len(starts)
            grid = ObjectGrid(parameters)
            for k, start in enumerate(starts, 1):
                chunk = slice(start, start + size)
                result = reconstruct(runner, scan.amplitudes[chunk], scan.positions[chunk], options=per_chunk)
                grid.add(result.amplitude, result.phase, result.coverage, result.origin)
                log.info("chunk %d/%d: %d patterns in %.2f s", k, self._chunks, result.n_patterns,
                         result.timings["total"])
                yield ReconstructOutput(grid.product(), progress=k)
        return grid

    def _stream(self, client: Client, name: str, scan: Scan, scale: float,
                parameters: ReconstructInput) -> Generator[ReconstructOutput, None, ObjectGrid]:
        """Send the scan chunk by chunk into a live session; yield the object after each chunk and
        return the last :class:`ObjectGrid`."""
        S = len(scan.amplitudes)
        size = self._settings.chunk_size.get_value()
        starts = range(0, S, size)
        self._chunks = len(starts)
        live = client.open_session(name, options={"scale": scale}, expected_frames=S)
        finished = False
        try:
            for k, start in enumerate(starts, 1):
                index = np.arange(start, min(start + size, S))
                receipt = live.send_frames(index, scan.amplitudes[index], scan.positions[index])
                for rejection in receipt["rejected"]:
                    log.warning("frame %d refused by the server: %s", rejection["index"], rejection["reason"])
                self._wait_on_canvas(live, index[-1] + 1)
                result = live.object()
                grid = ObjectGrid(parameters)
                grid.add(result.amplitude, result.phase, result.coverage, result.origin)
                log.info("chunk %d/%d: %d of %d patterns on the canvas of session %s", k, self._chunks,
                         result.n_patterns, S, live.id)
                yield ReconstructOutput(grid.product(), progress=k)
            live.close()
            finished = True
            return grid
        finally:
            if not finished:  # Stop (the generator was closed) or an error: drop the server's work now
                with contextlib.suppress(ServingError, ServerUnreachable):
                    live.close(cancel=True)

    def _wait_on_canvas(self, live: LiveSession, count: int) -> None:
        """Until ``count`` frames are stitched (or refused); :class:`TimeoutError` after ``TimeoutSeconds``."""
        timeout_s = self._settings.timeout_s.get_value()
        frames = live.wait_stitched(count, timeout_s=timeout_s, poll_s=0.02)["frames"]
        if frames["reconstructed"] + frames["rejected"] < count:
            raise TimeoutError(f"session {live.id} stitched {frames['reconstructed']} of {count} frames in "
                               f"{timeout_s} s (`[{GROUP}] TimeoutSeconds`); the server is overloaded or stuck")
