"""A small httpx client for a ptychopinn server: ``/v1/reconstruct``, binary OIP ``infer`` and live sessions.

Errors from the server come back as the class :data:`serving.errors.STATUS` lists first for the
status, carrying the server's message (so ``except InvalidInput`` works the same in-process and over
HTTP; a 500 is a :class:`~serving.errors.ServerError`, not a refusal of the request).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
import numpy.typing as npt

from ptycho_torch.bundle import INPUT_NAMES, OUTPUT_NAMES
from ptycho_torch.errors import ConfigError, PtychoError
from ptycho_torch.model_facts import ModelFacts
from ptycho_torch.pipeline import Reconstruction
from ptycho_torch.plan import ReconstructOptions
from serving.errors import Overloaded, SessionNotFound, Unauthorized, error_for_status
from serving.npz_wire import RECONSTRUCT_MEDIA_TYPE, decode_reconstruction, encode_arrays, encode_reconstruct_request
from serving.protocol_v2 import HEADER_LENGTH, decode_response, encode_request

__all__ = ["Client", "LiveSession", "RemoteRunner", "reconstruct_file", "resend_on_503"]

T = TypeVar("T")


class ServerUnreachable(PtychoError, ConnectionError):
    """No answer from the server: refused, unresolvable, timed out, or the connection dropped."""


class Client:
    """``Client("http://127.0.0.1:8000", token=...)``; a context manager, or call :meth:`close`.

    Raises :class:`~ptycho_torch.errors.ConfigError` for a URL that is not http(s)://, and
    :class:`ServerUnreachable` (one line: the URL, what failed, what to check) for network failures.
    """

    def __init__(self, url: str, *, token: str | None = None, timeout_s: float = 300.0) -> None:
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"server URL must start with http:// or https://, got {url!r}; "
                              "e.g. http://127.0.0.1:8000 (the address `ptychopinn serve` logs)")
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.url, self.token = url.rstrip("/"), token
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx.TransportError as error:
            raise ServerUnreachable(
                f"no answer from {self._http.base_url}{path} ({type(error).__name__}: {error}); is `ptychopinn "
                "serve` running there? Check the URL and port, or raise --timeout for a slow server") from None
        if response.status_code >= 400:
            try:
                message = response.json()["error"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:500]
            refusal = error_for_status(response.status_code)
            if response.status_code == 404 and path.startswith("/v1/sessions/"):
                refusal = SessionNotFound
            if refusal is Overloaded:
                raise Overloaded(message, retry_after_s=int(response.headers.get("retry-after", "1")))
            if refusal is Unauthorized:
                raise Unauthorized(message)
            raise refusal(f"HTTP {response.status_code} from {response.request.url}: {message}")
        return response

    def ready(self) -> bool:
        """True when the server answers ready (``/v2/health/ready``)."""
        return self._http.get("/v2/health/ready").status_code == 200

    def wait_ready(self, timeout_s: float = 60.0, *, poll_s: float = 0.25) -> None:
        """Block until the server answers ready; :class:`TimeoutError` after ``timeout_s`` seconds
        (a server that is still starting, or not listening yet, is polled again)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                if self.ready():
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self._http.base_url} was not ready within {timeout_s} s")
            time.sleep(poll_s)

    def model_metadata(self, model: str) -> dict[str, Any]:
        """OIP metadata of ``model`` (``/v2/models/{model}``), including the providers it runs on."""
        return self._request("GET", f"/v2/models/{model}").json()

    def model_facts(self, model: str) -> ModelFacts:
        """What reconstructing with the served ``model`` needs (its latest version), from its OIP metadata."""
        metadata = self.model_metadata(model)
        versions = metadata.get("versions") or [None]
        return ModelFacts.from_parameters(metadata["name"], metadata["parameters"], version=versions[-1])

    def reconstruct(self, patterns: npt.ArrayLike, positions: npt.ArrayLike, *, probe: npt.ArrayLike | None = None,
                    options: ReconstructOptions | dict[str, Any] | None = None, mask: npt.ArrayLike | None = None,
                    compress: bool = False) -> Reconstruction:
        """Stitched object for a scan (see :func:`ptycho_torch.pipeline.reconstruct`), computed by the server;
        ``mask`` ``(N, N)`` bool marks bad detector pixels."""
        body = encode_reconstruct_request(patterns, positions, probe=probe, options=options, mask=mask,
                                          compress=compress)
        response = self._request("POST", "/v1/reconstruct", content=body,
                                 headers={"Content-Type": RECONSTRUCT_MEDIA_TYPE})
        return decode_reconstruction(response.content)[0]

    def infer(self, model: str, diffraction: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]
              ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """``amplitude, phase`` for one model batch, over OIP with binary tensors both ways."""
        inputs = dict(zip(INPUT_NAMES, (np.asarray(diffraction, np.float32), np.asarray(scale, np.float32)),
                          strict=True))
        body, headers = encode_request(inputs, OUTPUT_NAMES)
        response = self._request("POST", f"/v2/models/{model}/infer", content=body, headers=headers)
        outputs = decode_response(response.content, response.headers.get(HEADER_LENGTH))
        amplitude, phase = (outputs[name] for name in OUTPUT_NAMES)
        return amplitude, phase

    def open_session(self, model: str | None = None, *, options: ReconstructOptions | dict[str, Any] | None = None,
                     expected_frames: int | None = None,
                     bounds: tuple[tuple[float, float], tuple[float, float]] | None = None) -> LiveSession:
        """A new live session (``POST /v1/sessions``) on ``model`` (None: the server's), pinned to its
        current version. ``options`` as for :meth:`reconstruct` (``scale_policy`` must be ``bundle``, unless
        the option ``scale`` is given: e.g. ``input_scale`` of a whole scan the caller holds)."""
        if isinstance(options, ReconstructOptions):
            options = options.to_json()
        body: dict[str, Any] = {"model": model, "options": options or {}, "expected_frames": expected_frames,
                                "bounds": None if bounds is None else [list(b) for b in bounds]}
        reply = self._request("POST", "/v1/sessions", json=body).json()
        return LiveSession(self, reply["session_id"], reply["model"])


@dataclass(frozen=True)
class LiveSession:
    """A live session on the server (see :mod:`serving.sessions`); from :meth:`Client.open_session`."""

    client: Client
    id: str
    model: dict[str, str]
    """``{"name", "version"}`` pinned at creation."""

    @property
    def path(self) -> str:
        return f"/v1/sessions/{self.id}"

    def _post_npz(self, what: str, arrays: dict[str, Any]) -> dict[str, Any]:
        return self.client._request("POST", f"{self.path}/{what}", content=encode_arrays(arrays),
                                    headers={"Content-Type": RECONSTRUCT_MEDIA_TYPE}).json()

    def send_frames(self, indices: npt.ArrayLike, patterns: npt.ArrayLike,
                    positions: npt.ArrayLike | None = None) -> dict[str, Any]:
        """Send frames ``patterns (K, N, N)`` with scan ``indices (K,)`` (and their ``positions (K, 2)``
        when known); returns the receipt (accepted, duplicates, rejected with reasons, paired, counts)."""
        arrays = {"indices": np.asarray(indices, np.int64), "patterns": np.asarray(patterns)}
        if positions is not None:
            arrays["positions"] = np.asarray(positions, np.float64)
        return self._post_npz("frames", arrays)

    def send_positions(self, indices: npt.ArrayLike, positions: npt.ArrayLike) -> dict[str, Any]:
        """Send scan ``positions (K, 2)`` ``[x, y]`` object pixels for ``indices (K,)``; returns the receipt."""
        return self._post_npz("positions", {"indices": np.asarray(indices, np.int64),
                                            "positions": np.asarray(positions, np.float64)})

    def status(self) -> dict[str, Any]:
        """Counts, pending work, rejections, rates, latency, pinned model, canvas."""
        return self.client._request("GET", self.path).json()

    def wait_stitched(self, count: int, *, timeout_s: float, poll_s: float) -> dict[str, Any]:
        """Poll :meth:`status` until ``count`` frames are on the canvas or refused, or ``timeout_s``
        seconds pass; returns the last status (the caller judges a timeout from its ``frames`` counts)."""
        deadline = time.monotonic() + timeout_s
        while (status := self.status())["frames"]["reconstructed"] + status["frames"]["rejected"] < count:
            if time.monotonic() > deadline:
                break
            time.sleep(poll_s)
        return status

    def object(self) -> Reconstruction:
        """The object so far, as :meth:`Client.reconstruct` returns one."""
        return decode_reconstruction(self.client._request("GET", f"{self.path}/object").content)[0]

    def close(self, *, cancel: bool = False) -> Reconstruction:
        """Close the session and return its final object (``cancel``: drop frames not yet inferred)."""
        response = self.client._request("DELETE", self.path, params={"cancel": str(cancel).lower()})
        return decode_reconstruction(response.content)[0]

    def updates(self, *, max_hz: float = 5.0, timeout_s: float = 60.0
                ) -> Iterator[tuple[dict[str, Any], npt.NDArray[np.float32], npt.NDArray[np.float32]]]:
        """``(header, amplitude, phase)`` of each changed region pushed over the WebSocket, until the
        session closes (the generator then returns); :class:`TimeoutError` after ``timeout_s`` of silence."""
        from websockets.sync.client import connect

        from serving.sessions.wire import decode_update

        url = "ws" + self.client.url[len("http"):] + f"{self.path}/updates?max_hz={max_hz}"
        headers = {"Authorization": f"Bearer {self.client.token}"} if self.client.token else None
        with connect(url, additional_headers=headers, open_timeout=timeout_s) as socket:
            while True:
                message = socket.recv(timeout=timeout_s)
                if isinstance(message, str):
                    return
                yield decode_update(message)


@dataclass(frozen=True)
class RemoteRunner:
    """A :class:`~ptycho_torch.pipeline.Runner` whose inference is the server's OIP ``infer``: the
    pipeline (validation, scale, grouping, stitching) runs here, the network on the server.

    A scan of any size goes out as requests of at most ``batch_size`` groups, so none meets the
    server's request-size limit (256 groups of 64x64 float32 are 4 MiB each way).
    """

    model: ModelFacts
    """The served model (:meth:`Client.model_facts`)."""
    client: Client
    batch_size: int = 256
    """Groups per OIP request."""
    progress: bool = False
    """Show a progress bar (tqdm, on stderr; only when stderr is a terminal)."""

    def __post_init__(self) -> None:
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise ConfigError(f"`batch_size` must be a positive integer, got {self.batch_size!r}")

    def infer(self, diffraction: npt.NDArray[np.float32], scale: npt.NDArray[np.float32]
              ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]]:
        """``amplitude, phase`` ``(B, C, N, N)`` for ``diffraction`` ``(B, C, N, N)``, request by request."""
        from tqdm import tqdm

        amplitude = np.empty(diffraction.shape, np.float32)
        phase = np.empty(diffraction.shape, np.float32)
        per_group = int(np.prod(diffraction.shape[1:2]))
        with tqdm(total=len(diffraction) * per_group, unit="pattern", desc=f"{self.model.name} at "
                  f"{self.client.url}", disable=None if self.progress else True, leave=False) as bar:
            for start in range(0, len(diffraction), self.batch_size):
                stop = start + self.batch_size
                amplitude[start:stop], phase[start:stop] = self.client.infer(
                    self.model.name, diffraction[start:stop], scale[start:stop])
                bar.update((min(stop, len(diffraction)) - start) * per_group)
        return amplitude, phase


def resend_on_503(send: Callable[..., T], *arrays: Any, on_retry: Callable[[Overloaded], object] | None = None) -> T:
    """``send(*arrays)``, resent after the server's Retry-After each time it refuses with 503
    (:class:`~serving.errors.Overloaded`), so a busy server slows a live client down and drops nothing;
    ``on_retry`` hears each refusal. Any other error is raised."""
    while True:
        try:
            return send(*arrays)
        except Overloaded as error:
            if on_retry is not None:
                on_retry(error)
            time.sleep(error.retry_after_s)


def reconstruct_file(url: str, npz_path: str | Path, *, token: str | None = None,
                     options: ReconstructOptions | dict[str, Any] | None = None, n: int | None = None,
                     timeout_s: float = 300.0) -> Reconstruction:
    """Reconstruct the scan in ``npz_path`` on the server at ``url``.

    Any file :func:`ptycho_torch.data.load_scan` reads (the NPZ data contract, or the tike layout
    cropped to ``n``); its patterns, centre positions and probe are sent as they are.
    """
    from ptycho_torch.data import load_scan  # numpy-only

    scan = load_scan(npz_path, n=n)
    positions = scan.positions
    with Client(url, token=token, timeout_s=timeout_s) as client:
        return client.reconstruct(scan.diff3d, positions, probe=scan.probeGuess, options=options)
