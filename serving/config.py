"""Every knob of the server in one frozen object, each default written once.

``ptychopinn serve`` turns its flags into a :class:`ServingConfig` (:func:`serving.cli.config_from_args`);
:func:`serving.app.create_app` builds the app from one; :meth:`Engine.from_config
<serving.engine.Engine.from_config>` and :meth:`DynamicBatcher.from_config
<serving.batching.DynamicBatcher.from_config>` read their knobs from it, and their keyword defaults
are those of :data:`DEFAULTS`. Per-request limits (:class:`Limits`) and live-session bounds
(:class:`SessionLimits`) are its two sections. Standard library only, so ``ptychopinn --help`` stays
fast. Build a changed copy with :func:`dataclasses.replace`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ptycho_torch.choices import ArrayBackendName
from ptycho_torch.errors import ConfigError

__all__ = ["DEFAULTS", "JSON_EXPANSION", "MiB", "Limits", "ServingConfig", "SessionLimits"]

MiB = 1 << 20

JSON_EXPANSION = 32
"""Bytes of Python objects per byte of JSON tensor data, worst case (``[[],[],...]``: 64 bytes per 3)."""


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one request may cost; ``ptychopinn serve`` flags in brackets."""

    max_body_bytes: int = 256 * MiB
    """Largest body, after ``Content-Encoding`` decoding (``--max-request-mb``)."""
    max_request_memory_bytes: int = 2048 * MiB
    """Working memory one request may need (``--max-request-memory-mb``)."""
    body_idle_timeout_s: float = 30.0
    """Longest wait for the next piece of a body (``--body-timeout-s`` / 10 at most)."""
    body_timeout_s: float = 300.0
    """Longest time to receive a whole body (``--body-timeout-s``)."""

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_request_memory_bytes", "body_idle_timeout_s", "body_timeout_s"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"`{name}` must be positive, got {getattr(self, name)!r}")

    @classmethod
    def from_megabytes(cls, *, max_request_mb: float, max_request_memory_mb: float, body_timeout_s: float) -> Limits:
        """The limits of the ``serve`` flags: sizes in MiB; each piece of a body may take a tenth of
        ``body_timeout_s``, at most :attr:`body_idle_timeout_s`'s default."""
        return cls(max_body_bytes=int(max_request_mb * MiB), max_request_memory_bytes=int(max_request_memory_mb * MiB),
                   body_timeout_s=body_timeout_s, body_idle_timeout_s=min(cls.body_idle_timeout_s, body_timeout_s / 10))

    @property
    def max_json_bytes(self) -> int:
        """Largest JSON part of an infer request: its tensors expand :data:`JSON_EXPANSION` times in Python."""
        return self.max_request_memory_bytes // JSON_EXPANSION


@dataclass(frozen=True)
class SessionLimits:
    """Bounds on what live sessions may hold (the server refuses more with 503, before memory runs out)."""

    max_sessions: int = 16
    """Sessions open at once (``--max-sessions``)."""
    max_pending_frames: int = 16384
    """Frames received and not yet on a canvas, over all sessions (64x64 float32: 16 KiB each)
    (``--max-pending-frames``)."""
    max_canvas_tiles: int = 256
    """Canvas tiles per session (128 x 128 pixels, 24 bytes each: 384 KiB per tile)."""
    idle_timeout_s: float = 900.0
    """A session with no request and no inference for this long is closed (``--session-idle-s``)."""
    max_scan_frames: int = 1_000_000
    """Largest scan index + 1 a session takes when it was not told ``expected_frames`` (bounds the
    per-index bookkeeping: 34 bytes per index up to the largest index received)."""
    refine_workers: int = 1
    """CPU threads each refining session's refinement uses (it runs on one thread of its own)."""
    max_refine_bytes: int = 1 << 30
    """Frames a refining session keeps for its refinement, in bytes (``4 N**2 + 24`` per frame: 65,536
    frames of 64x64); its refinement rounds need about as much again while they run."""

    def __post_init__(self) -> None:
        for name in ("max_sessions", "max_pending_frames", "max_canvas_tiles", "max_scan_frames", "refine_workers",
                     "max_refine_bytes"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 1):
                raise ConfigError(f"`{name}` must be a positive integer, got {value!r}")
        if not self.idle_timeout_s > 0:
            raise ConfigError(f"`idle_timeout_s` must be positive seconds, got {self.idle_timeout_s!r}")


def _strings(value: Sequence[str] | None) -> tuple[str, ...] | None:
    return None if value is None else tuple(value)


@dataclass(frozen=True, kw_only=True)
class ServingConfig:
    """The server: model, network, engine, batching, access and limits (``ptychopinn serve`` flags in
    brackets). Each knob is checked where it is used (the engine, batcher, admission and guards raise
    :class:`~ptycho_torch.errors.ConfigError` naming it)."""

    bundle: Path | None = None
    """Bundle folder or ``.zip`` served (``--bundle``; None: the shipped model)."""
    model_repository: Path | None = None
    """Triton-style folder ``<model>/<version>/`` of bundles, all served (``--model-repository``)."""
    host: str = "127.0.0.1"
    """Interface to bind (``--host``)."""
    port: int = 8000
    """TCP port (``--port``; Triton's)."""
    providers: tuple[str, ...] | None = None
    """onnxruntime providers in priority order (``--providers``; None: TensorRT, CUDA, CPU, whichever
    this build has)."""
    intra_op_threads: int | None = None
    """onnxruntime intra-op threads (``--intra-op-threads``; None: one per physical core)."""
    max_batch_size: int = 64
    """Largest model batch: the engine warms up every batch shape up to it, and the batcher never
    exceeds it nor the engine's own (``--max-batch-size``)."""
    max_queue_delay_us: int = 100
    """How long the oldest waiting item may wait for a fuller batch, microseconds (``--max-queue-delay-us``)."""
    max_queue_size: int = 256
    """Infer requests waiting (and in progress) before 503 + Retry-After (``--max-queue-size``)."""
    max_queue_wait_s: float | None = None
    """A request that waited this long in the inference queue without running is answered 504
    (``--max-queue-wait-s``; None: no deadline)."""
    max_concurrent_reconstructs: int = 4
    """``/v1/reconstruct`` requests in progress before 503 (``--max-concurrent-reconstructs``)."""
    token: str | None = None
    """Bearer token clients must send (``--token-file``; None: no token, loopback clients only)."""
    allow_remote: bool = False
    """Answer clients on other machines without a token (``--allow-remote``)."""
    allowed_hosts: tuple[str, ...] | None = None
    """``Host`` header names accepted, ``*`` for any (``--allowed-hosts``; None: the loopback names
    without a token, any with one)."""
    cors_origins: tuple[str, ...] = ()
    """Browser origins allowed to call the API (``--cors-origins``; none: CORS off)."""
    trusted_keys: tuple[Path, ...] = ()
    """Ed25519 public keys; only bundles signed by one are loaded (``--trusted-key``; none: the keys
    in ``$PTYCHOPINN_TRUSTED_KEYS``, else any bundle)."""
    limits: Limits = field(default_factory=Limits)
    """Per-request size, memory and time limits."""
    sessions: SessionLimits = field(default_factory=SessionLimits)
    """Bounds on live scan sessions."""
    refine_backend: ArrayBackendName | None = None
    """Where refinements run (``--refine-backend``): ``numpy`` on CPU threads or ``cupy`` on the GPU; None:
    ``$PTYCHOPINN_REFINE_BACKEND``, else numpy. ``ptychopinn serve`` checks it loads at start."""

    def __post_init__(self) -> None:
        for name in ("providers", "allowed_hosts", "cors_origins"):  # lists welcome, stored as tuples
            object.__setattr__(self, name, _strings(getattr(self, name)))
        object.__setattr__(self, "cors_origins", self.cors_origins or ())
        object.__setattr__(self, "trusted_keys", tuple(Path(k) for k in self.trusted_keys))
        if self.token is not None:
            if not (isinstance(self.token, str) and self.token.strip()):
                raise ConfigError("`token` must be a non-empty string or None, got an empty one; put the token in "
                                  "the --token-file")
            object.__setattr__(self, "token", self.token.strip())
        if not (isinstance(self.port, int) and 0 <= self.port <= 65535):
            raise ConfigError(f"`port` must be an integer in [0, 65535], got {self.port!r}")
        for name, cls in (("limits", Limits), ("sessions", SessionLimits)):
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"`{name}` must be a {cls.__name__}, got {type(getattr(self, name)).__name__}")


DEFAULTS = ServingConfig()
"""The defaults: what ``ptychopinn serve`` without flags and ``create_app(engine)`` use."""
