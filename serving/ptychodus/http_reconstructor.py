"""``PtychoPINN-Serve`` > ``HTTP``: reconstruct on a remote ``ptychopinn serve`` (e.g. a GPU node).

The scan goes out in chunks of ``ChunkSize`` patterns. Each chunk runs through the same
:func:`ptycho_torch.pipeline.reconstruct` as the ONNX reconstructor, with the model batches sent to the
server's Open Inference Protocol ``infer`` endpoint, so the normalisation is the whole scan's (computed
once here, sent explicitly with every batch) and not each chunk's. Chunks are merged on the object
grid by their coverage weights, which for gridsize 1 gives exactly the one-shot result; for
gridsize > 1 neighbour groups are drawn within a chunk. After every chunk the object so far is
yielded, so Ptychodus shows progress and can stop between chunks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from ptychodus.api.reconstruct import Reconstructor, ReconstructInput, ReconstructOutput

from ptycho_torch.errors import ConfigError
from serving.client import Client, RemoteRunner, ServedModel, ServerUnreachable
from serving.errors import ModelNotFound
from ptycho_torch.pipeline import ReconstructOptions, network_scale, reconstruct
from serving.ptychodus.adapter import ObjectGrid, check_model_geometry, scan_from_input
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
        return self._chunks

    def _client(self) -> tuple[Client, str]:
        url = self._settings.server_url.get_value().strip()
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"`[{GROUP}] ServerURL` must be an http(s):// URL, got {url!r}; set it to the address "
                              "of `ptychopinn serve`, e.g. http://gpu-node:8000")
        token = self._settings.api_token.get_value().strip() or None
        return Client(url, token=token, timeout_s=self._settings.timeout_s.get_value()), url

    def _model(self, client: Client, url: str, name: str) -> ServedModel:
        """The served model; connection problems become one clear :class:`ConfigError`."""
        if not name:
            raise ConfigError(f"`[{GROUP}] ServerModel` must name the model served at {url}, got nothing; "
                              "`ptychopinn serve` logs it at start-up (the bundle's name)")
        try:
            return ServedModel.from_metadata(client.model_metadata(name))
        except ServerUnreachable as error:
            raise ConfigError(f"`[{GROUP}] ServerURL` must reach a running `ptychopinn serve`, got {url}: "
                              f"{error}") from None
        except ModelNotFound as error:
            raise ConfigError(f"`[{GROUP}] ServerModel` must be a model served at {url}: {error}") from None

    def reconstruct(self, parameters: ReconstructInput) -> Iterator[ReconstructOutput]:
        scan = scan_from_input(parameters)
        client, url = self._client()
        with client:
            name = self._settings.server_model.get_value().strip()
            model = self._model(client, url, name)
            check_model_geometry(scan, N=model.N, gridsize=model.gridsize, model=f"{name} at {url}")
            scale = network_scale(scan.amplitudes, self._settings.policy(), model.training_scale)
            runner = RemoteRunner(model, client)
            options = ReconstructOptions(scale=scale)  # the whole scan's, the same for every chunk
            size = self._settings.chunk_size.get_value()
            starts = range(0, len(scan.amplitudes), size)
            self._chunks = len(starts)
            grid = ObjectGrid(parameters)
            for k, start in enumerate(starts, 1):
                chunk = slice(start, start + size)
                result = reconstruct(runner, scan.amplitudes[chunk], scan.positions[chunk], options=options)
                grid.add(result.amplitude, result.phase, result.coverage, result.origin)
                log.info("chunk %d/%d: %d patterns in %.2f s", k, self._chunks, result.n_patterns,
                         result.timings["total"])
                yield ReconstructOutput(grid.product(), progress=k)
