"""The benchmark suite's smallest case runs end to end, so `python -m bench all --quick` cannot rot."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROSE = "Hand-written prose that the generator must keep."


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    """``python -m bench stitch quality --smoke`` into temporary results/docs/figures (~30 s)."""
    tmp = tmp_path_factory.mktemp("bench")
    doc = tmp / "benchmarks.md"
    doc.write_text(f"# Benchmarks\n\n{PROSE}\n\n<!-- bench:stitch:begin -->\nstale table\n<!-- bench:stitch:end -->\n\n"
                   "Prose after the block.\n")
    done = subprocess.run(
        [sys.executable, "-m", "bench", "stitch", "quality", "--smoke", "--results-dir", str(tmp / "results"),
         "--docs", str(doc), "--figures-dir", str(tmp / "figures")],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    files = list((tmp / "results").glob("*-smoke.json"))
    assert len(files) == 1, files
    return json.loads(files[0].read_text()), doc, tmp / "figures"


def test_results_carry_machine_and_medians(smoke_run: tuple[dict, Path, Path]) -> None:
    results, _, _ = smoke_run
    assert results["mode"] == "smoke"
    assert set(results["parts"]) == {"stitch", "quality"}
    machine = results["parts"]["stitch"]["machine"]
    assert machine["logical_cores"] >= 1 and machine["cpu_model"]
    assert "numpy" in machine["versions"] and "onnxruntime" in machine["versions"]
    row = results["parts"]["stitch"]["rows"][0]
    assert row["patches"] == 200
    assert row["max_abs_diff"] < 1e-5  # ours and ptychodus' stitcher agree
    assert row["ours_patches_per_s"] > 0 and row["ratio"] > 0


def test_quality_case_trains_serves_and_scores_time_to_quality(smoke_run: tuple[dict, Path, Path]) -> None:
    results, _, figures = smoke_run
    part = results["parts"]["quality"]
    case = part["cases"]["gold_1e6_dense"]
    assert case["test_positions"] > 0 and case["ptychi"] == "skipped in smoke mode"
    [training] = part["training"].values()
    assert training["steps"] >= 1 and training["train_positions"] == case["test_positions"]
    curves = case["curves"]
    assert [p["iterations"] for p in curves["network only"]] == [0]
    assert [p["iterations"] for p in curves["network + k iterations"]] == [1, 3]
    assert [p["iterations"] for p in curves["refinement from flat"]] == [1, 3]
    for points in curves.values():
        for point in points:
            assert point["seconds"] > 0 and -1 <= point["ssim_amplitude"] <= 1 and -1 <= point["ssim_phase"] <= 1
            assert point["nll_median"] > 0 and 0 <= point["r_factor_median"]  # every response carries its data fit
    # three iterations from a flat start beat the flat object itself (the physics works end to end)
    assert curves["refinement from flat"][-1]["ssim_amplitude"] > case["flat"]["ssim_amplitude"] + 0.2
    ttq = case["time_to_quality"]
    assert ttq["target"]["amplitude"] == pytest.approx(0.95 * ttq["best"]["amplitude"])
    assert any(hit is not None for hit in ttq["reached"].values())
    for name in ("time_to_quality.png", "quality_gold_1e6_dense.png", "quality_weak_contrast.png"):
        assert (figures / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_weak_contrast_case_runs_network_and_flat_refinement_with_the_probe_refined(
        smoke_run: tuple[dict, Path, Path]) -> None:
    results, doc, _ = smoke_run
    part = results["parts"]["quality"]
    case = part["cases"]["weak_contrast"]
    assert case["test_positions"] == 64 and case["reference"] == "ground truth"  # the whole 8 x 8 scan at N=32
    assert case["refine_options"] == {"refine_probe": True} and "stand-in" in case["notes"][0]
    assert [p["iterations"] for p in case["curves"]["network + k iterations"]] == [1, 3]
    assert [p["iterations"] for p in case["curves"]["refinement from flat"]] == [1, 3]
    # the refinement with the probe refined beats the flat object on this weak object
    assert case["curves"]["refinement from flat"][-1]["ssim_amplitude"] > case["flat"]["ssim_amplitude"] + 0.2
    assert "speed-up vs refinement from flat" in doc.read_text()


def test_weak_contrast_case_without_its_model_is_reported_not_run(monkeypatch: pytest.MonkeyPatch,
                                                                  tmp_path: Path) -> None:
    from bench import quality

    monkeypatch.setattr(quality, "WEAK_BUNDLE", tmp_path / "absent")
    assert quality.weak_case(quality.SIZES["quick"]) == quality.NOT_SHIPPED
    row = quality.table({"cases": {"weak_contrast": {"label": "weak", "reference": quality.NOT_SHIPPED}}})
    assert "| weak_contrast | — | model not shipped yet (bench/models/weak_contrast: python -m bench.curves run" in row


def test_docs_tables_regenerated_prose_kept(smoke_run: tuple[dict, Path, Path]) -> None:
    results, doc, _ = smoke_run
    text = doc.read_text()
    assert PROSE in text and "Prose after the block." in text
    assert "stale table" not in text
    stitch_rows = results["parts"]["stitch"]["rows"]
    assert f"| 200 | {stitch_rows[0]['canvas'][0]}x{stitch_rows[0]['canvas'][1]} |" in text
    for name in ("quality", "gpu"):
        assert f"<!-- bench:{name}:begin -->" in text and f"<!-- bench:{name}:end -->" in text


def test_missing_ptychi_venv_is_reported_not_fatal(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from bench import ptychi

    monkeypatch.setattr(ptychi, "VENV_PYTHON", tmp_path / "absent" / "python")
    assert not ptychi.available()
    with pytest.raises(RuntimeError, match="run bench/ptychi_env.sh"):
        ptychi.reconstruct(np.ones((1, 4, 4)), np.zeros(1), np.zeros(1), np.ones((4, 4), np.complex64), (8, 8),
                           {"max_epochs": 1})
