"""Learning curves at equal CPU time: held-out Poisson NLL and SSIM per training configuration.

Each configuration is scored on a case (:data:`CASES`, the configuration's ``case``, default
``gold``). ``gold`` is the case of issue 11: the central 176x176 px of the shipped gold-ball object
with its real 3-mode probe (``data/gold_balls_from_pickle.npz``), a raster scan with a 4 px step
(784 positions), Poisson noise at 1e6 photons per pattern, N=64; the top half of the positions is
the scan a configuration may train on, the bottom half (392 patterns) is never trained on.
``weak_contrast`` is the solver benchmark's weak-contrast scan (:func:`bench.cases.weak_contrast_scan`:
a GRF object of amplitude 0.9-1 and phase +-0.15 rad through the Siemens star's probe at N=64, a
20x20 raster at 8 px with jitter, 1e6 photons), all 400 patterns scored: a network for that
instrument trains on simulated objects only (``weakcorpus``), never on this object. Every
``--eval-every`` CPU-seconds of training (process CPU time, evaluation excluded) the current
generator reconstructs the case's test patterns, which are stitched and scored against the ground
truth next to the flat object (amplitude 1, phase 0) on the same region, together with the
held-out Poisson NLL per pixel against the ground truth's own NLL (the floor) and the
scan-step-periodic amplitude error (the grid texture, :func:`ptycho_torch.metrics.periodic_rms`).

    OMP_NUM_THREADS=1 python -m bench.curves run taper-gold --budget 450 --eval-every 75
    python -m bench.curves report            # bench/results/curves.json, the PNG, the docs table
    python -m bench.curves export smooth-goldcorpus bench/models/gold_balls   # ship a run's model
    OMP_NUM_THREADS=1 python -m bench.curves run fno-weakcorpus --budget 1800 --eval-every 300
    python -m bench.curves export fno-weakcorpus bench/models/weak_contrast    # bench quality's weak case

A run writes ``runs/curves/<name>/curve.jsonl`` (one line per evaluation) and ``resume.ckpt``;
running the same command again continues from there (cumulative CPU time is kept in the file).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.quality import GOLD
from bench.report import ROOT, cell, finite_or_none, update_docs
from ptycho_torch.data import RawData, spatial_split
from ptycho_torch.data_fit import data_fit
from ptycho_torch.grouping import extract_patches
from ptycho_torch.simulation import far_field_intensity, load_probe, simulate_scan

CASE = {"N": 64, "crop": 176, "step": 4, "nphotons": 1e6, "seed": 0, "centre": (155, 160)}
"""The gold case (issue 11)."""
WEAK_CASE = {"N": 64, "side": 20, "step": 8, "nphotons": 1e6, "seed": 0, "train_seed": 100}
"""The weak-contrast case: :func:`bench.cases.weak_contrast_scan` with ``seed`` (the test scan, every
pattern scored); ``train_seed``: the same instrument and raster on another object (what a bundle is
verified on at export, and what ``data: gold`` would train on)."""
RUNS = ROOT / "runs" / "curves"


def poisson_nll(intensity: np.ndarray, counts: np.ndarray) -> float:
    """Mean per-pixel Poisson NLL (with log k!) of ``counts`` under the patterns ``intensity``, at the
    maximum-likelihood global scale (``ptycho_torch.data_fit``)."""
    return float(data_fit(intensity, counts).patterns.nll.mean())


THREADS = 1


def _crop_origin() -> tuple[int, int]:  # the gold case's crop in the gold-ball object
    return tuple(c - CASE["crop"] // 2 for c in CASE["centre"])


def gold_scan() -> tuple[RawData, RawData, np.ndarray]:
    """(train half, held-out half, ground-truth object) of the issue-11 gold-ball case."""
    N, crop, step = CASE["N"], CASE["crop"], CASE["step"]
    with np.load(GOLD) as npz:
        full = npz["obj"]
    r0, c0 = _crop_origin()
    obj = full[r0:r0 + crop, c0:c0 + crop]
    centres = np.arange(N / 2, crop - N / 2 - 1, step, dtype=np.float64)
    x, y = (v.ravel() for v in np.meshgrid(centres, centres))
    scan = simulate_scan(obj, load_probe(GOLD, N), x, y, nphotons=CASE["nphotons"], seed=CASE["seed"],
                         metadata={"source": "gold_balls_from_pickle.npz (cdtools; CC0 data)"})
    train, test = spatial_split(scan, axis="y", fraction=0.5)
    return train, test, obj


def gold_truth_patterns(truth: np.ndarray, test: RawData) -> np.ndarray:
    """Noiseless patterns of ``truth`` at the test positions, by the gold case's own forward model
    (``simulate_scan``'s: bilinear object patches)."""
    return far_field_intensity(extract_patches(truth, test.xcoords, test.ycoords, test.diff3d.shape[-1]),
                               test.probeGuess)


def gold_corpus_inputs() -> dict[str, Any]:
    """:func:`ptycho_torch.corpus.write_corpus`'s probe arguments for the gold case: its probe; its gold
    objects are crops of the gold-ball object above every pixel a held-out pattern illuminates."""
    _, test, _ = gold_scan()
    with np.load(GOLD) as npz:
        full = npz["obj"]
    boundary = _crop_origin()[0] + int(np.floor(test.ycoords.min() - CASE["N"] / 2))
    return {"probe": load_probe(GOLD, CASE["N"]), "probe_origin": f"{GOLD.name} (cropped to N)",
            "gold_source": full[:boundary]}


def weak_scans(side: int = WEAK_CASE["side"]) -> tuple[RawData, RawData, np.ndarray]:
    """(the same instrument on another object, the weak-contrast test scan, its ground truth)."""
    from bench.cases import weak_contrast_scan

    N, nphotons = WEAK_CASE["N"], WEAK_CASE["nphotons"]
    other = weak_contrast_scan(N, side, nphotons=nphotons, seed=WEAK_CASE["train_seed"]).scan
    weak = weak_contrast_scan(N, side, nphotons=nphotons, seed=WEAK_CASE["seed"])
    return other, weak.scan, weak.truth


def weak_truth_patterns(truth: np.ndarray, test: RawData) -> np.ndarray:
    """Noiseless patterns of ``truth`` at the test positions, by the weak case's own forward model
    (:func:`bench.cases.subpixel_intensity`: the probe Fourier-shifted over the integer window)."""
    from bench.cases import subpixel_intensity

    N = test.diff3d.shape[-1]
    return subpixel_intensity(truth, np.asarray(test.probeGuess).reshape(N, N), test.xcoords, test.ycoords)


def weak_corpus_inputs() -> dict[str, Any]:
    """:func:`ptycho_torch.corpus.write_corpus`'s probe arguments for the weak-contrast case: the
    instrument's probe, as the case simulates it."""
    from bench.cases import star_probe

    return {"probe": star_probe(WEAK_CASE["N"]),
            "probe_origin": "Siemens star file's probe, Fourier-cropped to N (bench.cases.star_probe)"}


@dataclass(frozen=True)
class CurveCase:
    """What a configuration's learning curve is scored on (see the module docstring)."""

    name: str
    setup: dict[str, Any]
    """The case's parameters (recorded in the results file)."""
    title: str
    """The figure's title."""
    scans: Callable[[], tuple[RawData, RawData, np.ndarray]]
    """(training scan, test scan, ground truth): the training scan is what ``data: gold`` trains on and
    what an exported bundle is verified on; the test scan is never trained on."""
    truth_patterns: Callable[[np.ndarray, RawData], np.ndarray]
    """Noiseless patterns of the truth at the test positions (the NLL floor), by the case's own forward model."""
    corpus_inputs: Callable[[], dict[str, Any]]
    """:func:`ptycho_torch.corpus.write_corpus`'s ``probe``, ``probe_origin`` (and ``gold_source``)."""
    bundle_name: str
    """The exported bundle's name."""

    @property
    def step(self) -> int:
        """The scan step in pixels (the period of the grid texture measure)."""
        return int(self.setup["step"])


def weak_case(side: int = WEAK_CASE["side"]) -> CurveCase:
    """The weak-contrast case with a ``side x side`` raster (20: the solver benchmark's scan)."""
    return CurveCase("weak_contrast", {**WEAK_CASE, "side": side},
                     f"weak contrast (GRF, Siemens-star probe), {WEAK_CASE['nphotons']:.0e} photons, "
                     f"N={WEAK_CASE['N']}, the whole scan ({side * side} patterns)",
                     lambda: weak_scans(side), weak_truth_patterns, weak_corpus_inputs, "weak_contrast")


CASES: dict[str, CurveCase] = {
    "gold": CurveCase("gold", CASE, f"gold balls, {CASE['nphotons']:.0e} photons, N={CASE['N']}, held-out half "
                      "(392 patterns)", gold_scan, gold_truth_patterns, gold_corpus_inputs, "gold_balls"),
    "weak_contrast": weak_case(),
}
"""name -> case (a configuration's ``case``)."""


def case_of(config: dict[str, Any]) -> str:
    """The name of the case a configuration (a :data:`CONFIGS` entry) is scored on."""
    return str(config.get("case", "gold"))


#: name -> simulated corpus (written once, under ``runs/curves/<name>``, through the probe of the
#: case of the configuration that trains on it). ``corpus`` varies the object kind and dose;
#: ``goldcorpus`` keeps the gold test's dose and object family (gold-ball crops only, rotated,
#: flipped, phase scaled) and has twice the scans; ``weakcorpus`` is for the weak-contrast case: GRF
#: objects of weak to moderate contrast (amplitude contrast 0.03-0.3, phase range 0.1-0.8 rad, around
#: the case's 0.1 and 0.3; correlation lengths 2-10 px around its 4), other seeds than the case's
#: object, random positions, the case's dose.
CORPORA: dict[str, dict[str, Any]] = {
    "corpus": {"scans": 128, "positions_per_scan": 256, "doses": (1e5, 1e6, 1e7), "object_size": 120,
               "scans_per_shard": 16, "seed": 1},
    "goldcorpus": {"scans": 256, "positions_per_scan": 256, "doses": (1e6,), "objects": ("gold",),
                   "object_size": 120, "scans_per_shard": 16, "seed": 2},
    "weakcorpus": {"scans": 256, "positions_per_scan": 256, "doses": (1e6,), "objects": ("grf",),
                   "object_size": 128, "scans_per_shard": 16, "seed": 3, "contrast": (0.03, 0.3),
                   "phase_range": (0.1, 0.8)},
}


def case_corpus(root: Path, spec: dict[str, Any], case: CurveCase):
    """The simulated corpus ``spec`` (a :data:`CORPORA` entry) through ``case``'s probe (written once)."""
    from ptycho_torch.corpus import Corpus, write_corpus

    if (root / "corpus.json").is_file():
        return Corpus.open(root)
    return write_corpus(root, **case.corpus_inputs(), **spec)


#: name -> (model overrides, training overrides, execution overrides, data)
CONFIGS: dict[str, dict[str, Any]] = {
    "tf-gold": {"model": {"generator": "tf"}, "data": "gold"},
    "full-gold": {"model": {"generator": "full"}, "data": "gold"},
    "taper-gold": {"model": {"generator": "taper"}, "data": "gold"},
    "smooth-gold": {"model": {"generator": "smooth"}, "data": "gold"},
    "tf-corpus": {"model": {"generator": "tf"}, "data": "corpus"},
    "smooth-goldcorpus": {"model": {"generator": "smooth"}, "data": "goldcorpus"},
    "fno-gold": {"model": {"architecture": "fno"}, "data": "gold"},
    "ffno-gold": {"model": {"architecture": "ffno"}, "data": "gold"},
    "fno-goldcorpus": {"model": {"architecture": "fno"}, "data": "goldcorpus"},
    "fno-gold-gs2": {"model": {"architecture": "fno", "gridsize": 2}, "data": "gold"},
    "fno-gold-distill": {"model": {"architecture": "fno"}, "training": {"distill_weight": 1.0}, "data": "gold"},
    "tf-gold-gs2": {"model": {"generator": "tf", "gridsize": 2}, "data": "gold"},
    "tf-gold-gs3": {"model": {"generator": "tf", "gridsize": 3}, "data": "gold"},
    "smooth-gold-finetune": {"model": {"generator": "smooth"}, "data": "finetune", "init": "smooth-gold"},
    "smooth-goldcorpus-finetune": {"model": {"generator": "smooth"}, "execution": {"learning_rate": 1e-4},
                                   "data": "finetune", "init": "smooth-goldcorpus"},
    "tf-weakcorpus": {"model": {"generator": "tf"}, "data": "weakcorpus", "case": "weak_contrast"},
    "fno-weakcorpus": {"model": {"architecture": "fno"}, "data": "weakcorpus", "case": "weak_contrast"},
}
"""``data``: ``gold`` (the case's training scan), ``finetune`` (its test scan, fine-tuning ``init``) or a
:data:`CORPORA` name; ``case``: the :data:`CASES` entry it is scored on (default ``gold``)."""
BASE_MODEL = {"N": 64, "gridsize": 1, "n_filters_scale": 1}


def evaluate(generator: Any, test: RawData, truth: np.ndarray, case: CurveCase) -> dict[str, float]:
    """Scores of ``generator`` on ``case``'s test scan (see the module docstring), through the product's
    own path (:func:`ptycho_torch.pipeline.reconstruct`: grouping, a grouped model's merge, stitching,
    the data fit of the stitched object). ``nll`` is the network's patches' fit to their own patterns
    (a grouped model's merged patches), ``nll_stitched`` the median fit of the stitched object."""
    from bench.quality import covered_box
    from ptycho_torch.metrics import evaluate_reconstruction, normalize_amplitude, periodic_rms
    from ptycho_torch.normalization import input_scale
    from ptycho_torch.pipeline import group_members, infer_patches, reconstruct
    from ptycho_torch.plan import ReconstructOptions, resolve
    from ptycho_torch.torch_runner import TorchRunner

    M = min(20, test.diff3d.shape[-1] // 2)
    scale = input_scale(test.diff3d)
    runner = TorchRunner(generator, training_scale=scale, stitch_M=M)
    result = reconstruct(runner, test.diff3d, test.positions, probe=test.probeGuess)
    canvas_box, object_box = covered_box(result.coverage, result.origin, truth.shape)
    image = (result.amplitude * np.exp(1j * result.phase))[canvas_box]
    reference = truth[object_box]
    out = {f"{name}_{key}": value for name, candidate in (("model", image), ("constant", np.ones_like(reference)))
           for key, value in evaluate_reconstruction(candidate, reference, register_first=False).scores().items()}
    plan = resolve(runner.model, ReconstructOptions(stitch_M=M))
    members = group_members(plan, test.positions)
    patches = infer_patches(runner, plan, test.diff3d, members, scale, test.positions)
    counts = test.diff3d.astype(np.float64) ** 2
    fit = data_fit(far_field_intensity(patches, test.probeGuess), counts[members.ravel()]).patterns.nll
    out["nll"], out["nll_median"] = float(fit.mean()), float(np.median(fit))
    assert result.data_fit is not None  # a probe was given
    out["nll_stitched"] = result.data_fit["nll_median"]
    out["nll_floor"] = poisson_nll(case.truth_patterns(truth, test), counts)
    ref_amp = np.abs(reference)
    out["grid_model"] = periodic_rms(normalize_amplitude(np.abs(image), ref_amp) - ref_amp, case.step)
    out["grid_truth"] = periodic_rms(ref_amp, case.step)
    return out


def _callback(path: Path, case: CurveCase, test: RawData, truth: np.ndarray, budget: float, every: float,
              start: dict[str, float]):
    import lightning as L

    class Curve(L.Callback):
        def on_train_start(self, trainer, pl_module):
            self.clock = time.process_time()
            self.cpu = start["cpu"]
            self.next = start["cpu"] + every if start["cpu"] > 0 else 0.0

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = time.process_time()
            self.cpu += now - self.clock
            if self.cpu >= self.next or self.cpu >= budget:
                generator = pl_module.generator.eval()
                record = {"step": trainer.global_step, "cpu_s": round(self.cpu, 1), "wall": time.time(),
                          "pretrained_cpu_s": start["pretrained_cpu"]}
                record.update(evaluate(generator, test, truth, case))
                generator.train()
                trainer.save_checkpoint(path.parent / "resume.ckpt")
                with path.open("a") as f:
                    f.write(json.dumps(finite_or_none(record)) + "\n")
                print(json.dumps({k: record[k] for k in ("step", "cpu_s", "nll", "model_ssim_amplitude",
                                                          "model_ssim_phase")}), flush=True)
                self.next = self.cpu + every
                if self.cpu >= budget:
                    trainer.should_stop = True
            self.clock = time.process_time()

    return Curve()


def read_curve(path: Path) -> list[dict[str, Any]]:
    """The evaluations of a run, oldest first (``curve.jsonl``: one JSON object per line)."""
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(name: str, budget: float, every: float, out: Path = RUNS) -> Path:
    """Train configuration ``name`` until ``budget`` CPU-seconds, evaluating every ``every``, on
    :data:`THREADS` torch threads (the curves' CPU-seconds are one thread's); the caller's thread count
    is restored afterwards (a test process's other tests must not inherit it)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        return _run(name, budget, every, out)
    finally:
        torch.set_num_threads(previous)


def _run(name: str, budget: float, every: float, out: Path) -> Path:
    from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
    from training.trainer import train

    spec = CONFIGS[name]
    case = CASES[case_of(spec)]
    run_dir = out / name
    run_dir.mkdir(parents=True, exist_ok=True)
    curve = run_dir / "curve.jsonl"
    records = read_curve(curve) if curve.is_file() else []
    start = {"cpu": records[-1]["cpu_s"] if records else 0.0, "pretrained_cpu": 0.0}
    if start["cpu"] >= budget:
        return curve
    train_scan, test, truth = case.scans()
    model = ModelConfig(**{**BASE_MODEL, **spec.get("model", {})})
    training = TrainingConfig(model=model, nphotons=case.setup["nphotons"], nepochs=100_000, batch_size=16,
                              output_dir=run_dir / "train", **spec.get("training", {}))
    execution = PyTorchExecutionConfig(accelerator="cpu", enable_progress_bar=False, logger_backend="none", seed=0,
                                       **spec.get("execution", {}))
    resume = run_dir / "resume.ckpt"
    sources = {"train_data": train_scan} if spec["data"] == "gold" else {"train_data": test} \
        if spec["data"] == "finetune" else {"corpus": case_corpus(out / spec["data"], CORPORA[spec["data"]], case)}
    resuming = resume.is_file() and bool(records)
    init = None
    if "init" in spec:  # a fine-tuning run: its CPU clock goes on from the model it starts from
        if resuming:
            start["pretrained_cpu"] = records[0]["pretrained_cpu_s"]
        else:
            init = run_dir / "init.ckpt"
            shutil.copyfile(out / spec["init"] / "resume.ckpt", init)  # the starting model, kept as it was
            start["pretrained_cpu"] = read_curve(out / spec["init"] / "curve.jsonl")[-1]["cpu_s"]
    train(training, execution, **sources, resume=resume if resuming else None, init_from=init,
          callbacks=[_callback(curve, case, test, truth, budget, every, start)])
    return curve


def export(name: str, out: Path, runs: Path = RUNS) -> Path:
    """Export the latest state of run ``name`` (``train/checkpoints/last.ckpt``, beside the run's
    ``summary.json``) as a bundle in ``out``, verified on its case's training scan (the gold case's
    top half; the weak-contrast case's other object). The checkpoint is scored on the case's test scan
    first (:func:`evaluate`, printed); the manifest's training record gets that held-out NLL per pixel without the constant log k! (the training loss's convention, at the
    data fit's maximum-likelihood scale), so that it compares with ``ptychopinn train``'s validation loss."""
    import tempfile

    from scipy.special import gammaln

    from export.bundle_writer import ExportOptions, export_checkpoint
    from ptycho_torch.checkpoint import load_generator
    from ptycho_torch.run_layout import RunLayout

    checkpoint = RunLayout(runs / name / "train").last_checkpoint
    case = CASES[case_of(CONFIGS[name])]
    train_scan, test, truth = case.scans()
    scores = evaluate(load_generator(checkpoint)[0].eval(), test, truth, case)
    print(json.dumps({k: scores[k] for k in ("nll", "nll_floor", "model_ssim_amplitude", "model_ssim_phase",
                                              "constant_ssim_amplitude", "constant_ssim_phase")}))
    log_k_factorial = float(gammaln(test.diff3d.astype(np.float64) ** 2 + 1).mean())
    if out.exists():
        shutil.rmtree(out)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = export_checkpoint(checkpoint, out, data=train_scan.to_file(Path(tmp) / f"{case.name}_train.npz"),
                                   options=ExportOptions(name=case.bundle_name),
                                   held_out_nll=scores["nll"] - log_k_factorial)
    return bundle.source


RESULTS = ROOT / "bench" / "results" / "curves.json"
FIGURE = ROOT / "docs" / "figures" / "learning_curves.png"
PANELS = (("nll", "nll_floor", "held-out Poisson NLL per pixel", "ground-truth floor"),
          ("model_ssim_amplitude", "constant_ssim_amplitude", "amplitude SSIM", "flat object"),
          ("model_ssim_phase", "constant_ssim_phase", "phase SSIM", "flat object"),
          ("grid_model", "grid_truth", "scan-step-periodic amplitude error (RMS)", "truth's own periodic part"))


def collect(out: Path = RUNS, results: Path = RESULTS) -> dict[str, Any]:
    """Every run's curve under ``out`` into ``results`` (JSON, committed: the docs regenerate from it).

    A run already in ``results`` and not under ``out`` is kept, with the configuration and machine it
    was recorded with (``machines``: the machine of each run), so that a run trained elsewhere (a
    long run on another machine) adds its curve without dropping the others."""
    from bench.machine import machine_info

    found = {path.parent.name: read_curve(path) for path in sorted(out.glob("*/curve.jsonl"))}
    previous = json.loads(results.read_text()) if results.is_file() else {"runs": {}, "configs": {}}
    old_machines = previous.get("machines") or {name: previous.get("machine") for name in previous["runs"]}
    names = list(previous["runs"]) + [name for name in found if name not in previous["runs"]]
    runs = {name: found[name] if name in found else previous["runs"][name] for name in names}
    configs = {name: CONFIGS[name] if name in found else previous["configs"].get(name, {}) for name in names}
    machine = machine_info()
    data = {"case": CASE, "cases": {name: CASES[name].setup for name in sorted({case_of(c) for c in configs.values()})},
            "corpora": CORPORA, "threads": THREADS, "machine": machine, "configs": configs, "runs": runs,
            "machines": {name: machine if name in found else old_machines.get(name) for name in names}}
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps(finite_or_none(data), indent=1) + "\n")
    return data


def _pretrained_cpu(data: dict[str, Any], name: str) -> float:
    """Training CPU-seconds of the model a fine-tuning run started from (0 for other runs)."""
    return data["runs"][name][0].get("pretrained_cpu_s", 0.0)


def runs_by_case(data: dict[str, Any]) -> dict[str, list[str]]:
    """The runs of ``data`` (a results file) by the case they are scored on, the gold case first (a
    configuration recorded without a ``case`` is a gold one)."""
    groups: dict[str, list[str]] = {}
    for name in data["runs"]:
        groups.setdefault(case_of(data["configs"].get(name, {})), []).append(name)
    return dict(sorted(groups.items(), key=lambda item: item[0] != "gold"))


def figure_path(case: str, path: Path = FIGURE) -> Path:
    """The learning-curve figure of ``case`` (``path`` itself for the gold case)."""
    return path if case == "gold" else path.with_name(f"{path.stem}_{case}{path.suffix}")


def figure(data: dict[str, Any], path: Path = FIGURE) -> list[Path]:
    """Learning curves, one figure per case (:func:`figure_path`), one panel per measure, each beside its
    reference line; the written paths."""
    return [_case_figure(data, names, CASES[case].title, figure_path(case, path))
            for case, names in runs_by_case(data).items()]


def _case_figure(data: dict[str, Any], names: list[str], title: str, path: Path) -> Path:
    from bench.figures import save_figure  # first: it selects the Agg backend

    # isort: split
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(PANELS), figsize=(4.2 * len(PANELS), 3.6))
    for ax, (key, ref, panel, ref_label) in zip(axes, PANELS, strict=True):
        for name in names:
            records = data["runs"][name]
            offset = _pretrained_cpu(data, name)  # a fine-tuning run continues its starting model's clock
            ax.plot([offset + r["cpu_s"] for r in records], [r[key] for r in records], marker=".", label=name)
        reference = data["runs"][names[0]][-1][ref]
        ax.axhline(reference, color="black", ls="--", lw=0.8, label=ref_label)
        if key == "nll":  # the first steps sit an order of magnitude above the floor
            ax.set_yscale("log")
        ax.set_xlabel("training CPU-seconds (1 thread)")
        ax.set_title(panel, fontsize=9)
        ax.legend(fontsize=6)
    fig.suptitle(title, fontsize=10)
    save_figure(fig, path)
    return path


def table(data: dict[str, Any]) -> str:
    """Markdown: every evaluation after the first step of every run (equal CPU-seconds line up),
    each score beside its reference; one table per case, the gold case's first."""
    tables = []
    for case, names in runs_by_case(data).items():
        heading = [] if case == "gold" else [f"Case `{case}`: {CASES[case].title}.", ""]
        tables.append("\n".join(heading + _case_table(data, names)))
    return "\n\n".join(tables)


def _case_table(data: dict[str, Any], names: list[str]) -> list[str]:
    lines = ["| configuration | CPU-s | step | held-out NLL (floor) | SSIM amp (flat) | SSIM phase (flat) | "
             "FRC50 amp / phase | grid RMS (truth) |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name in names:
        records = data["runs"][name]
        offset = _pretrained_cpu(data, name)
        for r in records[1:]:
            cpu = f"{offset:.0f} + {r['cpu_s']:.0f}" if offset else f"{r['cpu_s']:.0f}"
            lines.append(
                f"| {name} | {cpu} | {r['step']} | {r['nll']:.3f} ({r['nll_floor']:.3f}) | "
                f"{r['model_ssim_amplitude']:.3f} ({r['constant_ssim_amplitude']:.3f}) | "
                f"{r['model_ssim_phase']:.3f} ({r['constant_ssim_phase']:.3f}) | "
                f"{cell(r['model_frc50_amplitude'], '.1f')} / {cell(r['model_frc50_phase'], '.1f')} | "
                f"{r['grid_model']:.4f} ({r['grid_truth']:.4f}) |")
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.curves", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="train one configuration, evaluating at CPU-time intervals")
    r.add_argument("name", choices=sorted(CONFIGS))
    r.add_argument("--budget", type=float, default=600.0, help="training CPU-seconds (default 600)")
    r.add_argument("--eval-every", type=float, default=60.0, help="CPU-seconds between evaluations")
    r.add_argument("--out", type=Path, default=RUNS)
    e = sub.add_parser("export", help="export a run's last evaluated model as a bundle")
    e.add_argument("name", choices=sorted(CONFIGS))
    e.add_argument("out", type=Path, help="bundle folder to write (replaced)")
    e.add_argument("--out-runs", type=Path, default=RUNS, help=f"runs folder (default {RUNS})")
    rep = sub.add_parser("report", help="collect the curves, draw the figure, regenerate the docs table")
    rep.add_argument("--out", type=Path, default=RUNS, help=f"runs folder (default {RUNS})")
    rep.add_argument("--from-results", action="store_true", help=f"redraw from {RESULTS} instead of the runs")
    rep.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    args = parser.parse_args(argv)
    if args.command == "run":
        print(run(args.name, args.budget, args.eval_every, args.out))
    elif args.command == "export":
        print(export(args.name, args.out, args.out_runs))
    else:
        data = json.loads(RESULTS.read_text()) if args.from_results else collect(args.out)
        figure(data)
        update_docs(args.docs, {"curves": table(data)})
        print(table(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
