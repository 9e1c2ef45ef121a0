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
    parser.add_argument("--host", default="127.0.0.1",
                        help="interface to bind (default 127.0.0.1; use 0.0.0.0 only behind a firewall/token)")
    parser.add_argument("--port", type=int, default=8000, help="TCP port (default 8000, as Triton)")
    parser.add_argument("--max-batch-size", type=int, default=64, help="largest model batch (default 64)")
    parser.add_argument("--max-queue-delay-us", type=int, default=100,
                        help="how long a waiting item may wait for a fuller batch, microseconds (default 100)")
    parser.add_argument("--max-queue-size", type=int, default=256,
                        help="requests allowed to wait before 503 + Retry-After (default 256)")
    parser.add_argument("--providers", default=None,
                        help="comma-separated onnxruntime providers in priority order, e.g. cuda,cpu "
                             "(default: TensorRT, CUDA, CPU, whichever this onnxruntime build has)")
    parser.add_argument("--intra-op-threads", type=int, default=None,
                        help="onnxruntime intra-op threads (default: one per physical core)")
    parser.add_argument("--token-file", type=Path, default=None,
                        help="file holding a bearer token that clients must send (default: no token)")
    parser.add_argument("--max-request-mb", type=float, default=256.0,
                        help="largest request body in MiB; larger ones get 413 (default 256)")


def run(args: argparse.Namespace) -> int:
    """Load, warm up and serve until interrupted."""
    import uvicorn

    from serving.app import create_app
    from ptycho_torch.bundle import load_bundle
    from serving.engine import Engine

    bundle_path = args.bundle or DEFAULT_BUNDLE
    if args.bundle is None and not (DEFAULT_BUNDLE / "manifest.json").is_file():
        raise ConfigError(f"`--bundle` must be given: no default model is shipped at {DEFAULT_BUNDLE}; "
                          "pass the folder written by `ptychopinn export`")
    if args.max_request_mb <= 0:
        raise ConfigError(f"`--max-request-mb` must be positive, got {args.max_request_mb}")
    token = read_token_file(args.token_file) if args.token_file is not None else None
    providers = [p.strip() for p in args.providers.split(",") if p.strip()] if args.providers else None
    engine = Engine(load_bundle(bundle_path), providers=providers, max_batch_size=args.max_batch_size,
                    intra_op_threads=args.intra_op_threads)
    app = create_app(engine, max_queue_delay_us=args.max_queue_delay_us, max_queue_size=args.max_queue_size,
                     token=token, max_request_bytes=int(args.max_request_mb * (1 << 20)))
    log.info("serving %s v%s on http://%s:%d (providers %s, warm-up %.2f s, token %s)", engine.bundle.name,
             engine.bundle.version, args.host, args.port, engine.providers, engine.warmup_s,
             "required" if token else "off")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info", access_log=False)
    return 0
