"""``ptychopinn replay``: stream a recorded scan into a live session as a detector would, and measure it.

The detector thread sends ``--chunk`` frames every ``chunk / rate`` seconds (scan order, on a fixed
clock: a slow server makes it fall behind, never skip). Positions travel in the frames message, or
with ``--positions-delay S`` on their own stream, each chunk's positions ``S`` seconds after its
frames (a motion system that reports late). A message refused with 503 is resent after the server's
Retry-After, so nothing is dropped on the client side. At the end the session is closed and the
figures are printed (and written as JSON with ``--json``): sustained frames/s (frames on the canvas
over the time from the first send to the last frame on the canvas), the server's frame-to-canvas
latency p50/p99 (frame received -> stitched), the send round trips, and frames lost (sent but not
on the final canvas: must be 0).

Module level stays light (argparse only), as every subcommand's.
"""

from __future__ import annotations

import argparse
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the replay arguments."""
    parser.add_argument("scan", type=Path,
                        help="scan file: a contract NPZ or the tike layout (cropped to the model's N)")
    parser.add_argument("--server", required=True, help="URL of a `ptychopinn serve` instance")
    parser.add_argument("--rate", type=float, required=True, help="detector frame rate to replay at, frames/s")
    parser.add_argument("--chunk", type=int, default=16, help="frames per message (default 16)")
    parser.add_argument("--positions-delay", type=float, default=None,
                        help="send positions on a separate stream, this many seconds after their frames "
                             "(default: positions travel with the frames)")
    parser.add_argument("--frames", type=int, default=None, help="replay only the first this many frames")
    parser.add_argument("--repeat", type=int, default=1,
                        help="replay the scan this many times as one longer scan (new indices, same positions)")
    parser.add_argument("--token-file", type=Path, default=None, help="bearer token file for --server")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    parser.add_argument("--timeout", type=float, default=120.0,
                        help="seconds to wait for the last frame to reach the canvas (default 120)")


def run(args: argparse.Namespace) -> int:
    """Replay, close the session, print the figures; returns 0 when no frame was lost, 1 otherwise."""
    import numpy as np

    from ptycho_torch.data import load_scan
    from ptycho_torch.errors import ConfigError
    from serving.cli import read_token_file
    from serving.client import Client

    if args.rate <= 0 or args.chunk < 1 or args.repeat < 1:
        raise ConfigError(f"`--rate` must be > 0, `--chunk` and `--repeat` >= 1; got {args.rate}, {args.chunk}, "
                          f"{args.repeat}")
    token = read_token_file(args.token_file) if args.token_file is not None else None
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would drown the figures
    with Client(args.server, token=token) as client:
        live = client.open_session()
        N = client.model_metadata(live.model["name"])["parameters"]["N"]
        scan = load_scan(args.scan, n=N)
        patterns = np.tile(scan.diff3d[: args.frames], (args.repeat, 1, 1))
        positions = np.tile(scan.positions[: args.frames], (args.repeat, 1))
        log.info("replaying %d frames of %s at %.1f frames/s in chunks of %d into session %s (%s v%s)",
                 len(patterns), args.scan, args.rate, args.chunk, live.id, live.model["name"], live.model["version"])
        figures = replay(client, live, patterns, positions, rate=args.rate, chunk=args.chunk,
                         positions_delay=args.positions_delay, timeout_s=args.timeout)
    figures.update(scan=str(args.scan), chunk=args.chunk, positions_delay_s=args.positions_delay,
                   model=live.model)
    print(format_figures(figures))
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0 if figures["frames_lost"] == 0 else 1


def replay(client: Any, live: Any, patterns: Any, positions: Any, *, rate: float, chunk: int,
           positions_delay: float | None, timeout_s: float) -> dict[str, Any]:
    """Stream ``patterns (S, N, N)`` and ``positions (S, 2)`` into ``live`` (a
    :class:`~serving.client.LiveSession`); returns the figures (see the module docstring)."""
    detector = _Detector(client, live, patterns, positions, rate=rate, chunk=chunk, positions_delay=positions_delay)
    sent_s = detector.send_all()
    status = live.wait_stitched(len(patterns), timeout_s=timeout_s, poll_s=0.01)
    done_s = time.perf_counter() - detector.t0
    return detector.figures(status, live.close(), sent_s=sent_s, done_s=done_s)


@dataclass
class _Detector:
    """The sending side of :func:`replay`: chunks on a fixed clock from ``t0``, one thread per stream
    (frames; positions too with ``positions_delay``), and what the sends met."""

    client: Any
    live: Any
    patterns: Any
    positions: Any
    rate: float
    chunk: int
    positions_delay: float | None
    round_trips: list[float] = field(default_factory=list)
    refusals: list[Exception] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    t0: float = 0.0

    def send_all(self) -> float:
        """Send every chunk of every stream; returns the seconds from the first send to the last."""
        import numpy as np

        S = len(self.patterns)
        chunks = [np.arange(start, min(start + self.chunk, S)) for start in range(0, S, self.chunk)]
        self.t0 = time.perf_counter()
        threads = [threading.Thread(target=self._stream, args=("frames", 0.0, chunks))]
        if self.positions_delay is not None:
            threads.append(threading.Thread(target=self._stream, args=("positions", self.positions_delay, chunks)))
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - self.t0

    def _timed(self, send_one: Any, *arrays: Any) -> None:
        started = time.perf_counter()
        send_one(*arrays)
        self.round_trips.append(time.perf_counter() - started)

    def _stream(self, kind: str, delay: float, chunks: list[Any]) -> None:
        from serving.client import Client, resend_on_503

        # each thread speaks through its own connection pool
        with Client(self.client.url, token=self.client.token) as own:
            session = type(self.live)(own, self.live.id, self.live.model)
            for k, index in enumerate(chunks):
                due = self.t0 + delay + k * self.chunk / self.rate
                time.sleep(max(0.0, due - time.perf_counter()))
                try:
                    if kind == "frames":
                        resend_on_503(self._timed, session.send_frames, index, self.patterns[index],
                                      None if self.positions_delay is not None else self.positions[index],
                                      on_retry=self.refusals.append)
                    else:
                        resend_on_503(self._timed, session.send_positions, index, self.positions[index],
                                      on_retry=self.refusals.append)
                except Exception as error:  # noqa: BLE001 - reported, and counted as lost frames
                    self.errors.append(f"{kind} chunk {k}: {error}")

    def figures(self, status: dict[str, Any], final: Any, *, sent_s: float, done_s: float) -> dict[str, Any]:
        """The figures of the module docstring, from the session's last status and its closing object."""
        import numpy as np

        S = len(self.patterns)
        latency = status["latency_s"]
        trips = np.asarray(self.round_trips) if self.round_trips else np.zeros(1)
        return {
            "frames_sent": S,
            "frames_on_canvas": final.n_patterns,
            "frames_lost": S - final.n_patterns,
            "rejected": status["frames"]["rejected"],
            "rejections": status["rejections"][:5],
            "errors": self.errors[:5],
            "retries_503": len(self.refusals),
            "requested_rate_fps": self.rate,
            "send_rate_fps": S / sent_s,
            "sustained_fps": final.n_patterns / done_s,
            "elapsed_s": done_s,
            "latency_p50_s": latency["p50"],
            "latency_p99_s": latency["p99"],
            "round_trip_p50_s": float(np.percentile(trips, 50)),
            "round_trip_p99_s": float(np.percentile(trips, 99)),
            "object_shape": list(final.amplitude.shape),
        }


def format_figures(figures: dict[str, Any]) -> str:
    """The human summary of :func:`replay`'s figures."""
    def ms(seconds: float | None) -> str:
        return "n/a" if seconds is None else f"{1000 * seconds:.0f} ms"

    return (f"replayed {figures['frames_sent']} frames at {figures['requested_rate_fps']:.1f} frames/s requested "
            f"(sent at {figures['send_rate_fps']:.1f}): sustained {figures['sustained_fps']:.1f} frames/s onto the "
            f"canvas; frame-to-canvas latency p50 {ms(figures['latency_p50_s'])}, p99 {ms(figures['latency_p99_s'])}; "
            f"send round trip p50 {ms(figures['round_trip_p50_s'])}, p99 {ms(figures['round_trip_p99_s'])}; "
            f"503 retries {figures['retries_503']}; frames lost {figures['frames_lost']}"
            + (f" (rejected {figures['rejected']}: {figures['rejections']}; errors {figures['errors']})"
               if figures["frames_lost"] else ""))
