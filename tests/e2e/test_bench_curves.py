"""`python -m bench.curves` trains the weak-contrast instrument's network end to end (a tiny corpus and
scan, a few CPU-seconds): the corpus goes through the case's probe, the run is scored on the case's scan,
resumes where it stopped, and exports a bundle named for the case."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_weak_contrast_network_trains_on_its_corpus_resumes_and_exports(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    from bench import curves
    from bench.cases import star_probe

    spec = curves.CONFIGS["tf-weakcorpus"]
    assert curves.case_of(spec) == "weak_contrast" and curves.CORPORA[spec["data"]]["objects"] == ("grf",)
    monkeypatch.setitem(curves.CORPORA, "weakcorpus", {**curves.CORPORA["weakcorpus"], "scans": 2,
                                                       "positions_per_scan": 32, "scans_per_shard": 1})
    monkeypatch.setitem(curves.CASES, "weak_contrast", curves.weak_case(side=6))  # 36 test patterns

    path = curves.run("tf-weakcorpus", budget=2, every=2, out=tmp_path)
    first = curves.read_curve(path)
    assert first[0]["step"] == 1 and first[-1]["cpu_s"] >= 2  # an evaluation after the first step, then at the budget
    corpus = json.loads((tmp_path / "weakcorpus" / "corpus.json").read_text())
    assert corpus["objects"] == ["grf"] and corpus["contrast"] == [0.03, 0.3] and corpus["phase_range"] == [0.1, 0.8]
    np.testing.assert_array_equal(np.load(tmp_path / "weakcorpus" / "probe.npy")[0], star_probe(64))
    for record in first:  # scored on the case's scan against its truth, beside the flat object
        assert 0 < record["nll_floor"] < record["nll"] and -1 <= record["model_ssim_amplitude"] <= 1
        assert record["constant_ssim_phase"] > 0.9  # a +-0.15 rad object: the flat phase already scores high

    curves.run("tf-weakcorpus", budget=3, every=2, out=tmp_path)  # the same command again continues the run
    resumed = curves.read_curve(path)
    assert resumed[:len(first)] == first and resumed[-1]["step"] > first[-1]["step"]
    assert resumed[-1]["cpu_s"] >= 3

    bundle = curves.export("tf-weakcorpus", tmp_path / "bundle", runs=tmp_path)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["name"] == "weak_contrast" and manifest["N"] == 64
    assert manifest["verification"]["inputs"] == "the scan weak_contrast_train.npz"
    assert manifest["training"]["steps"] == resumed[-1]["step"]

    # report: the new run joins the committed curves (kept with their machine), the gold table first
    results = tmp_path / "curves.json"
    results.write_text(curves.RESULTS.read_text())
    before = json.loads(results.read_text())
    data = curves.collect(tmp_path, results)
    assert list(data["runs"]) == [*before["runs"], "tf-weakcorpus"]
    assert all(data["runs"][name] == records for name, records in before["runs"].items())
    assert all(data["machines"][name] == before["machines"][name] for name in before["runs"])
    table = curves.table(data)
    gold_table = curves.table(before).split("\n\nCase `weak_contrast`")[0]
    assert table.startswith(gold_table + "\n\nCase `weak_contrast`: weak contrast") and "| tf-weakcorpus |" in table
    assert curves.figure_path("weak_contrast").name == "learning_curves_weak_contrast.png"
