"""``ptychopinn serve``: load a bundle, warm it up and serve it with uvicorn.

Module level stays light (argparse only): onnxruntime, FastAPI and uvicorn are imported in :func:`run`.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ptycho_torch.errors import ConfigError

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
    """Add the ``serve`` arguments."""
    parser.add_argument("--bundle", type=Path, default=None,
                        help=f"bundle directory or .zip from `ptychopinn export` (default: the shipped model, "
                             f"{DEFAULT_BUNDLE.name})")
    parser.add_argument("--model-repository", type=Path, default=None,
                        help="Triton-style model repository, DIR/<model>/<version>/ bundle folders (or "
                             "<version>.zip): every model is served, and POST /v2/repository/models/<m>/load "
                             "(re)loads one while serving, without a failed request")
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1; use 0.0.0.0 only behind a firewall/token)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000, as Triton)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="largest model batch (default 64)")
    parser.add_argument("--max-queue-delay-us", type=int, default=100,
                        help="how long a waiting item may wait for a fuller batch, microseconds (default 100)")
    parser.add_argument("--max-queue-size", type=int, default=256,
                        help="requests allowed to wait before 503 + Retry-After (default 256)")
    parser.add_argument("--max-queue-wait-s", type=float, default=None,
                        help="answer 504 to a request that waited this many seconds in the inference queue "
                             "without running (default: no deadline)")
    parser.add_argument("--providers", default=None,
                        help="comma-separated onnxruntime providers in priority order, e.g. cuda,cpu "
                             "(default: TensorRT, CUDA, CPU, whichever this onnxruntime build has)")
    parser.add_argument("--intra-op-threads", type=int, default=None,
                        help="onnxruntime intra-op threads (default: one per physical core)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="file holding a bearer token that clients must send (default: no token)")
    parser.add_argument("--max-request-mb", type=float, default=256.0,
                        help="largest request body in MiB, after Content-Encoding decoding; larger ones get 413 "
                             "(default 256)")
    parser.add_argument("--max-request-memory-mb", type=float, default=2048.0,
                        help="working memory one request may need (decoded arrays, canvas, JSON objects), MiB; "
                             "larger ones get 413 naming the field and sizes (default 2048)")
    parser.add_argument("--max-concurrent-reconstructs", type=int, default=4,
                        help="/v1/reconstruct requests in progress before 503; peak memory is about this "
                             "times --max-request-memory-mb (default 4)")
    parser.add_argument("--body-timeout-s", type=float, default=300.0,
                        help="longest time to receive a request body (408 after it; each piece may take a "
                             "tenth of it, at most 30 s) (default 300)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="serve clients on other machines without a token (default: without --token-file "
                             "only loopback clients are answered)")
    parser.add_argument("--allowed-hosts", default=None,
                        help="comma-separated Host header names accepted, '*' for any (default: the loopback "
                             "names without a token, any with one)")
    parser.add_argument("--cors-origins", default="",
                        help="comma-separated browser origins allowed to call the API (default none: CORS off)")
    parser.add_argument("--max-sessions", type=int, default=16,
                        help="live scan sessions open at once; more get 503 (default 16)")
    parser.add_argument("--max-pending-frames", type=int, default=16384,
                        help="frames held by live sessions and not yet stitched, all sessions together; a message "
                             "that would pass it gets 503 + Retry-After (default 16384)")
    parser.add_argument("--trusted-key", type=Path, action="append", default=None, metavar="PUBLIC_KEY",
                        help="accept only bundles signed by this Ed25519 public key (`ptychopinn keygen`; "
                             "repeat for several; default: the keys in $PTYCHOPINN_TRUSTED_KEYS, else any bundle)")
    parser.add_argument("--session-idle-s", type=float, default=900.0,
                        help="close a live session after this many seconds without requests (default 900)")


def run(args: argparse.Namespace) -> int:
    """Load, warm up and serve until interrupted."""
    import uvicorn

    from serving.app import create_app
    from ptycho_torch.bundle import Bundle, load_bundle
    from serving.engine import Engine
    from serving.limits import Limits
    from serving.sessions import SessionLimits

    bundle_path = args.bundle or _first_in_repository(args.model_repository) or DEFAULT_BUNDLE
    if bundle_path == DEFAULT_BUNDLE and not (DEFAULT_BUNDLE / "manifest.json").is_file():
        raise ConfigError(f"`--bundle` must be given: no default model is shipped at {DEFAULT_BUNDLE}; "
                          "pass the folder written by `ptychopinn export`")
    for flag in ("max_request_mb", "max_request_memory_mb", "body_timeout_s", "max_concurrent_reconstructs"):
        if getattr(args, flag) <= 0:
            raise ConfigError(f"`--{flag.replace('_', '-')}` must be positive, got {getattr(args, flag)}")
    token = read_token_file(args.token_file) if args.token_file is not None else None
    require_signatures(args.trusted_key)
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    def make_engine(bundle: Bundle) -> Engine:
        return Engine(bundle, providers=providers, max_batch_size=args.max_batch_size,
                      intra_op_threads=args.intra_op_threads)

    engine = make_engine(load_bundle(bundle_path))
    limits = Limits(max_body_bytes=int(args.max_request_mb * (1 << 20)),
                    max_request_memory_bytes=int(args.max_request_memory_mb * (1 << 20)),
                    body_timeout_s=args.body_timeout_s, body_idle_timeout_s=min(30.0, args.body_timeout_s / 10))
    app = create_app(engine, max_queue_delay_us=args.max_queue_delay_us, max_queue_size=args.max_queue_size,
                     max_queue_wait_s=args.max_queue_wait_s,
                     token=token, limits=limits, max_concurrent_reconstructs=args.max_concurrent_reconstructs,
                     allow_remote=args.allow_remote, allowed_hosts=_names(args.allowed_hosts),
                     cors_origins=_names(args.cors_origins) or (),
                     session_limits=SessionLimits(max_sessions=args.max_sessions,
                                                  max_pending_frames=args.max_pending_frames,
                                                  idle_timeout_s=args.session_idle_s),
                     model_repository=args.model_repository, engine_factory=make_engine)
    if token is None and not args.allow_remote and args.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("binding %s without --token-file: only clients on this machine are answered (403 for the "
                    "others); add --token-file, or --allow-remote on a trusted network", args.host)
    log.info("serving %s v%s on http://%s:%d (providers %s, warm-up %.2f s, token %s)", engine.bundle.name,
             engine.bundle.version, args.host, args.port, engine.providers, engine.warmup_s,
             "required" if token else "off")
    exit_on_stop_signals()
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0


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


def _names(text: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return None if text is None else [part.strip() for part in text.split(",") if part.strip()]
