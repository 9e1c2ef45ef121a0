"""The solver benchmark's smallest size runs end to end (our side only: smoke mode skips pty-chi), so
`python -m bench solver` cannot rot; its cases are what they say."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_solver_smoke_run_scores_every_algorithm(tmp_path: Path) -> None:
    doc = tmp_path / "benchmarks.md"
    doc.write_text("# Benchmarks\n")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "solver", "--smoke", "--results-dir", str(tmp_path / "results"),
         "--docs", str(doc), "--figures-dir", str(tmp_path / "figures")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    [path] = (tmp_path / "results").glob("*-smoke.json")
    part = json.loads(path.read_text())["parts"]["solver"]
    assert set(part["cases"]) == {"weak_contrast", "weak_contrast_pos_errors"}
    for name, case in part["cases"].items():
        assert case["ptychi"] == "skipped in smoke mode" and case["reference"] == "ground truth"
        assert {m.split(" (")[0] for m in case["curves"]} == {f"ours {a}" for a in part["algorithms"]}
        assert sum(m.endswith(", default)") for m in case["curves"]) == 1  # the rule the solver picks itself
        for method, points in case["curves"].items():
            assert [p["iterations"] for p in points][:3] == [0, 1, 2]
            assert all(p["seconds"] > 0 and -1 <= p["ssim_amplitude"] <= 1 for p in points)
            assert case["runs"][method]["stopped"]  # every run says why it stopped
            # a refinement from flat beats the flat object (the case and the scoring agree on the grid)
            assert points[-1]["ssim_amplitude"] > case["flat"]["ssim_amplitude"] + 0.1, (name, method)
        if name == "weak_contrast_pos_errors":
            assert case["refine_positions"] and "vs_true_positions" in case
            assert all(r["given_positions_rms_px"] > 0.5 for r in case["runs"].values())  # +-1 px at N = 32
    assert "<!-- bench:solver:begin -->" in doc.read_text()
    assert (tmp_path / "figures" / "solver_time_to_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weak_contrast_case_is_what_it_says() -> None:
    from bench.cases import POSITION_ERROR_PX, weak_contrast_cases

    exact, moved = weak_contrast_cases(N=32, side=6)
    assert exact.amplitudes.shape == (36, 32, 32) and exact.probe.shape == (1, 32, 32)
    np.testing.assert_array_equal(exact.amplitudes, moved.amplitudes)  # one measurement, two sets of given positions
    np.testing.assert_array_equal(exact.positions, exact.true_positions)
    error = moved.positions - moved.true_positions
    assert 0.5 < np.abs(error).max() <= POSITION_ERROR_PX / 2 and not exact.refine_positions and moved.refine_positions
    amplitude, phase = np.abs(exact.truth), np.angle(exact.truth)
    assert 0.9 - 1e-6 <= amplitude.min() and amplitude.max() <= 1.0 + 1e-6 and np.ptp(phase) <= 0.3 + 1e-6
    counts = exact.counts.sum(axis=(1, 2))
    assert counts.mean() == pytest.approx(1e6, rel=0.01)
    steps = np.diff(np.unique(np.round(exact.true_positions[:, 1] / 4)))  # rows of a 4 px (N/8) raster, +-0.5 px jitter
    assert np.all(steps == 1)
