"""``ptychopinn serve``: load a bundle, warm it up and serve it with uvicorn.

The flags become one :class:`~serving.config.ServingConfig` (:func:`config_from_args`), whose defaults
are theirs. Module level stays light (argparse and :mod:`serving.config`): onnxruntime, FastAPI and
uvicorn are imported in :func:`run`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ptycho_torch.choices import ArrayBackendName, values
from ptycho_torch.errors import ConfigError
from serving.config import DEFAULTS, Limits, MiB, ServingConfig, SessionLimits

log = logging.getLogger(__name__)

DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default_bundle"
"""The model shipped with the package, served when no ``--bundle`` is given."""


def read_token_file(path: Path) -> str:
    """The bearer token stored in ``path`` (surrounding whitespace removed); a clear error otherwise."""
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except OSError as error:
        raise ConfigError(f"`--token-file` must be a readable file, got {path} ({error})") from None
    if not token:
        raise ConfigError(f"`--token-file` must hold a token, got an empty file {path}")
    return token


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` arguments; their defaults are :data:`serving.config.DEFAULTS`."""
    _model_and_engine_flags(parser)
    _access_and_request_flags(parser)
    _session_and_trust_flags(parser)


def _model_and_engine_flags(parser: argparse.ArgumentParser) -> None:
    """What is served, where, and how onnxruntime batches it."""
    d = DEFAULTS
    parser.add_argument("--bundle", type=Path, default=d.bundle,
                        help=f"bundle directory or .zip from `ptychopinn export` (default: the shipped model, "
                             f"{DEFAULT_BUNDLE.name})")
    parser.add_argument("--model-repository", type=Path, default=d.model_repository,
                        help="Triton-style model repository, DIR/<model>/<version>/ bundle folders (or "
                             "<version>.zip): every model is served, and POST /v2/repository/models/<m>/load "
                             "(re)loads one while serving, without a failed request")
    parser.add_argument("--host", default=d.host,
                        help=f"interface to bind (default {d.host}; use 0.0.0.0 only behind a firewall/token)")
    parser.add_argument("--port", type=int, default=d.port, help=f"TCP port (default {d.port}, as Triton)")
    parser.add_argument("--max-batch-size", type=int, default=d.max_batch_size,
                        help=f"largest model batch (default {d.max_batch_size})")
    parser.add_argument("--max-queue-delay-us", type=int, default=d.max_queue_delay_us,
                        help=f"how long a waiting item may wait for a fuller batch, microseconds (default "
                             f"{d.max_queue_delay_us})")
    parser.add_argument("--max-queue-size", type=int, default=d.max_queue_size,
                        help=f"requests allowed to wait before 503 + Retry-After (default {d.max_queue_size})")
    parser.add_argument("--max-queue-wait-s", type=float, default=d.max_queue_wait_s,
                        help="answer 504 to a request that waited this many seconds in the inference queue "
                             "without running (default: no deadline)")
    parser.add_argument("--providers", default=None,
                        help="comma-separated onnxruntime providers in priority order, e.g. cuda,cpu "
                             "(default: TensorRT, CUDA, CPU, whichever this onnxruntime build has)")
    parser.add_argument("--intra-op-threads", type=int, default=d.intra_op_threads,
                        help="onnxruntime intra-op threads (default: one per physical core)")


def _access_and_request_flags(parser: argparse.ArgumentParser) -> None:
    """Who may call, and the size and time limits of one request."""
    d, limits = DEFAULTS, DEFAULTS.limits
    parser.add_argument("--token-file", type=Path, default=None,
                        help="file holding a bearer token that clients must send (default: no token)")
    parser.add_argument("--max-request-mb", type=float, default=limits.max_body_bytes / MiB,
                        help=f"largest request body in MiB, after Content-Encoding decoding; larger ones get 413 "
                             f"(default {limits.max_body_bytes // MiB})")
    parser.add_argument("--max-request-memory-mb", type=float, default=limits.max_request_memory_bytes / MiB,
                        help=f"working memory one request may need (decoded arrays, canvas, JSON objects), MiB; "
                             f"larger ones get 413 naming the field and sizes (default "
                             f"{limits.max_request_memory_bytes // MiB})")
    parser.add_argument("--max-concurrent-reconstructs", type=int, default=d.max_concurrent_reconstructs,
                        help=f"/v1/reconstruct requests in progress before 503; peak memory is about this "
                             f"times --max-request-memory-mb (default {d.max_concurrent_reconstructs})")
    parser.add_argument("--body-timeout-s", type=float, default=limits.body_timeout_s,
                        help=f"longest time to receive a request body (408 after it; each piece may take a "
                             f"tenth of it, at most {limits.body_idle_timeout_s:g} s) (default {limits.body_timeout_s:g})")
    parser.add_argument("--allow-remote", action="store_true", default=d.allow_remote,
                        help="serve clients on other machines without a token (default: without --token-file "
                             "only loopback clients are answered)")
    parser.add_argument("--allowed-hosts", default=None,
                        help="comma-separated Host header names accepted, '*' for any (default: the loopback "
                             "names without a token, any with one)")
    parser.add_argument("--cors-origins", default=",".join(d.cors_origins),
                        help="comma-separated browser origins allowed to call the API (default none: CORS off)")


def _session_and_trust_flags(parser: argparse.ArgumentParser) -> None:
    """Live sessions' limits, and which bundle signatures are trusted."""
    sessions = DEFAULTS.sessions
    parser.add_argument("--max-sessions", type=int, default=sessions.max_sessions,
                        help=f"live scan sessions open at once; more get 503 (default {sessions.max_sessions})")
    parser.add_argument("--max-pending-frames", type=int, default=sessions.max_pending_frames,
                        help=f"frames held by live sessions and not yet stitched, all sessions together; a message "
                             f"that would pass it gets 503 + Retry-After (default {sessions.max_pending_frames})")
    parser.add_argument("--trusted-key", type=Path, action="append", default=None, metavar="PUBLIC_KEY",
                        help="accept only bundles signed by this Ed25519 public key (`ptychopinn keygen`; "
                             "repeat for several; default: the keys in $PTYCHOPINN_TRUSTED_KEYS, else any bundle)")
    parser.add_argument("--refine-backend", choices=values(ArrayBackendName), default=None,
                        help="where refinements run: numpy (CPU threads) or cupy (this host's GPU; the gpu extra); "
                             "default: $PTYCHOPINN_REFINE_BACKEND, else numpy")
    parser.add_argument("--session-idle-s", type=float, default=sessions.idle_timeout_s,
                        help=f"close a live session after this many seconds without requests (default "
                             f"{sessions.idle_timeout_s:g})")


def config_from_args(args: argparse.Namespace) -> ServingConfig:
    """The :class:`~serving.config.ServingConfig` of the ``serve`` flags (the token read from
    ``--token-file``); a flag out of range is a one-line :class:`ConfigError` naming it."""
    for flag in ("max_request_mb", "max_request_memory_mb", "body_timeout_s", "max_concurrent_reconstructs"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"`--{flag.replace('_', '-')}` must be positive, got {getattr(args, flag)}")
    return ServingConfig(
        bundle=args.bundle, model_repository=args.model_repository, host=args.host, port=args.port,
        providers=_names(args.providers), intra_op_threads=args.intra_op_threads,
        max_batch_size=args.max_batch_size, max_queue_delay_us=args.max_queue_delay_us,
        max_queue_size=args.max_queue_size, max_queue_wait_s=args.max_queue_wait_s,
        max_concurrent_reconstructs=args.max_concurrent_reconstructs,
        token=read_token_file(args.token_file) if args.token_file is not None else None,
        allow_remote=args.allow_remote, allowed_hosts=_names(args.allowed_hosts),
        cors_origins=_names(args.cors_origins) or (), trusted_keys=tuple(args.trusted_key or ()),
        limits=Limits.from_megabytes(max_request_mb=args.max_request_mb,
                                     max_request_memory_mb=args.max_request_memory_mb,
                                     body_timeout_s=args.body_timeout_s),
        sessions=SessionLimits(max_sessions=args.max_sessions, max_pending_frames=args.max_pending_frames,
                               idle_timeout_s=args.session_idle_s),
        refine_backend=args.refine_backend,
    )


def run(args: argparse.Namespace) -> int:
    """Load, warm up and serve until interrupted."""
    import uvicorn

    from ptycho_torch.bundle import Bundle, load_bundle
    from serving.app import create_app
    from serving.engine import Engine

    config = config_from_args(args)
    bundle_path = config.bundle or _first_in_repository(config.model_repository) or DEFAULT_BUNDLE
    if bundle_path == DEFAULT_BUNDLE and not (DEFAULT_BUNDLE / "manifest.json").is_file():
        raise ConfigError(f"`--bundle` must be given: no default model is shipped at {DEFAULT_BUNDLE}; "
                          "pass the folder written by `ptychopinn export`")
    require_signatures(list(config.trusted_keys))
    require_refine_backend(config.refine_backend)  # the flag, else $PTYCHOPINN_REFINE_BACKEND: before ready

    def make_engine(bundle: Bundle) -> Engine:
        return Engine.from_config(bundle, config)

    engine = make_engine(load_bundle(bundle_path))
    app = create_app(engine, config, engine_factory=make_engine)
    if config.token is None and not config.allow_remote and config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s without --token-file: only clients on this machine are answered (403 for the "
                    "others); add --token-file, or --allow-remote on a trusted network", config.host)
    log.info("serving %s v%s on http://%s:%d (providers %s, warm-up %.2f s, token %s)", engine.bundle.name,
             engine.bundle.version, config.host, config.port, engine.providers, engine.warmup_s,
             "required" if config.token else "off")
    exit_on_stop_signals()
    uvicorn.run(app, host=config.host, port=config.port, log_level="info", access_log=False)
    return 0


def require_refine_backend(name: str | None) -> None:
    """Every refinement of this process runs on ``name`` (``--refine-backend``; None: the one
    ``$PTYCHOPINN_REFINE_BACKEND`` names, unset or empty for numpy): checked to load here, in one line naming
    the fix, then put in ``$PTYCHOPINN_REFINE_BACKEND``, which :class:`~ptycho_torch.refinement.RefineSettings`
    reads. ``ptychopinn serve`` calls it before it reports ready, ``ptychopinn reconstruct --refine`` before
    it loads the model."""
    import os

    from ptycho_torch.refinement.backend import ENVIRONMENT, backend_problem

    problem = backend_problem(name)
    if problem is not None:
        raise ConfigError(problem)
    if name is not None:
        os.environ[ENVIRONMENT] = name


def require_signatures(keys: list[Path] | None) -> None:
    """With ``--trusted-key``, every bundle this process loads (the served one, and any loaded later)
    must be signed by one of ``keys``: they go into ``$PTYCHOPINN_TRUSTED_KEYS``, which
    :func:`~ptycho_torch.bundle.load_bundle` reads. A key that cannot be read fails here, in one line."""
    import os

    from ptycho_torch.bundle.signing import TRUSTED_KEYS_ENV, load_public_keys, trusted_keys_from_env

    if keys:
        os.environ[TRUSTED_KEYS_ENV] = os.pathsep.join(str(Path(k).resolve()) for k in keys)
    trusted = load_public_keys(trusted_keys_from_env())
    if trusted:
        log.info("accepting only bundles signed by trusted key ids %s", sorted(trusted))


def exit_on_stop_signals() -> None:
    """Make SIGTERM and SIGINT end the process with ``SystemExit(128 + signal)``.

    uvicorn shuts down gracefully on them, then re-raises the signal with the handler it found; with
    the default handler SIGTERM would kill the process on the spot, skipping interpreter exit, so the
    unpacked copy of a ``.zip`` bundle (removed at exit) would stay in ``$TMPDIR``.
    """
    import signal

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, stop)


def _first_in_repository(root: Path | None) -> Path | None:
    """The latest version of the first model (by name) in a model repository folder."""
    from serving.repository import bundle_versions

    if root is None:
        return None
    if not root.is_dir():
        raise ConfigError(f"`--model-repository` must be a folder, got {root}")
    for model in sorted(d for d in root.iterdir() if d.is_dir()):
        versions = bundle_versions(model)
        if versions:
            return versions[max(versions, key=int)]
    raise ConfigError(f"`--model-repository` {root} holds no model: put bundles in <model>/<version>/ folders")


def _names(text: str | None) -> tuple[str, ...] | None:
    """A comma-separated option as a tuple (None when not given, or empty)."""
    names = tuple(part.strip() for part in (text or "").split(",") if part.strip())
    return names or None
