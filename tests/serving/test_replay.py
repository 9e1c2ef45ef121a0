"""``ptychopinn replay`` streams the shipped real scan into a live server and loses no frame."""

from __future__ import annotations

import json
from pathlib import Path

from ptycho_torch.data import load_scan
from ptycho_torch.plan import ReconstructOptions
from ptychopinn.cli import main
from serving.app import create_app
from serving.client import Client
from serving.engine import Engine

SCAN = Path(__file__).resolve().parents[2] / "data" / "siemens-star-small.npz.bz2"


def test_replay_with_delayed_positions_loses_nothing_and_matches_reconstruct(engine: Engine, serve, tmp_path,
                                                                             capsys) -> None:
    server = serve(create_app(engine))
    figures_path = tmp_path / "figures.json"
    code = main(["replay", str(SCAN), "--server", server.url, "--rate", "400", "--chunk", "24",
                 "--frames", "120", "--positions-delay", "0.1", "--json", str(figures_path)])
    assert code == 0
    figures = json.loads(figures_path.read_text())
    assert figures["frames_sent"] == 120 and figures["frames_on_canvas"] == 120 and figures["frames_lost"] == 0
    assert figures["sustained_fps"] > 0 and figures["latency_p99_s"] >= figures["latency_p50_s"] > 0
    assert "frames lost 0" in capsys.readouterr().out
    # the replayed object is the whole-scan reconstruction of the same 120 frames
    scan = load_scan(SCAN, n=32)
    with Client(server.url) as client:
        whole = client.reconstruct(scan.diff3d[:120], scan.positions[:120],
                                   options=ReconstructOptions(scale_policy="bundle"))
    assert figures["object_shape"] == list(whole.amplitude.shape)
