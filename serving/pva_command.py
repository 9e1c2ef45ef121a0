"""``ptychopinn pva-source``: feed a new live session from EPICS PV Access channels (the ``pva`` extra).

Runs until ``--expected-frames`` frames are on the canvas, or until interrupted (Ctrl-C), then
closes the session and prints its counts. Watch it grow at ``SERVER/ui``. Module level stays light.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
from pathlib import Path

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the pva-source arguments."""
    parser.add_argument("--server", required=True, help="URL of a `ptychopinn serve` instance")
    parser.add_argument("--frames", required=True, help="NTNDArray channel of the detector (uniqueId = scan index)")
    parser.add_argument("--positions", required=True,
                        help="positions channel: a structure of arrays index (long), x, y (double, object pixels)")
    parser.add_argument("--expected-frames", type=int, default=None,
                        help="stop once this many frames are on the canvas")
    parser.add_argument("--units", choices=("amplitude", "counts"), default="counts",
                        help="what the detector publishes (default counts: the server takes the square root)")
    parser.add_argument("--chunk", type=int, default=16, help="frames per message to the server (default 16)")
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token file for --server")


def run(args: argparse.Namespace) -> int:
    """Feed the session; returns 0."""
    from serving.cli import read_token_file
    from serving.client import Client
    from serving.pva_source import PvaSource

    token = read_token_file(args.token_file) if args.token_file is not None else None
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with Client(args.server, token=token) as client:
        live = client.open_session(options={"units": args.units}, expected_frames=args.expected_frames)
        N = client.model_metadata(live.model["name"])["parameters"]["N"]
        source = PvaSource(live, args.frames, args.positions, N=N, chunk=args.chunk).start()
        log.info("session %s on %s v%s: watching %s and %s; view it at %s/ui#session=%s", live.id,
                 live.model["name"], live.model["version"], args.frames, args.positions, client.url, live.id)
        try:
            while args.expected_frames is None or live.status()["frames"]["reconstructed"] < args.expected_frames:
                time.sleep(0.5)
        except KeyboardInterrupt:
            log.info("interrupted: closing the session")
        counts = source.stop()
        final = live.close()
    print(json.dumps({"session_id": live.id, "frames_sent": counts.frames, "positions_sent": counts.positions,
                      "skipped": counts.skipped, "frames_on_canvas": final.n_patterns}))
    return 0
