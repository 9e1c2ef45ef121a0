"""Rebuild the model shipped in ``serving/default_bundle`` from the shipped real scan.

    python -m export.default_bundle            # or: make default-bundle

PtychoPINN is self-supervised, so the default model is trained on the measured data alone: the
top half (spatial split along y) of the APS Velociprobe Siemens-star scan
(``data/siemens-star-small.npz.bz2``, tike's BSD-3-style licence), the central 64x64
detector crop, validated on the bottom half. The bottom half is never trained on, so
reconstructing it (``make demo``) shows the model on unseen sample regions. The file's probe is not
the measurement's, so the recipe first refines the training half with the solver (43 iterations,
about 5 s): its probe is the training probe (``refine_probe``) and its object a target beside the
physics loss (``distill_weight`` 1, distillation). Held-out phase correlation with a converged
probe-refined full-scan reconstruction, over HTTP: 0.68; with the refined probe alone 0.65 (320
epochs); with the file's probe 0.41 (docs/benchmarks.md, "The network"). Training is seeded and
deterministic; 120 epochs (2,040 steps) took 1,224 s on one core of a busy 2-core machine
(2026-12-08). The held-out NLL was still creeping down at the end (-447.69 at epoch 101, -447.73
best). An interrupted run continues from its last checkpoint when started again with the same
``--run-dir``.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

from ptycho_torch.choices import Architecture, Generator, Scheduler, values
from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
from ptycho_torch.data import load_siemens_star, spatial_split

PROJECT_ROOT = Path(__file__).resolve().parents[1]
REAL_SCAN = PROJECT_ROOT / "data" / "siemens-star-small.npz.bz2"
DEFAULT_OUT = PROJECT_ROOT / "serving" / "default_bundle"

GENERATOR = Generator.TF
"""The generator of the shipped model. ``smooth`` tracks ``tf`` within noise on the gold-ball learning
curves, but on the real star it learns far slower (held-out NLL -436.0 after 50 epochs against
-446.6 for ``tf`` after the same 50, same seed and schedule), so the shipped model is ``tf``."""
ARCHITECTURE = Architecture.CNN
"""The generator family of the shipped model."""
DISTILL_WEIGHT = 1.0
"""Distillation weight of the shipped model (``TrainingConfig.distill_weight``): the solver's object of the
training half pulls the patches beside the physics (phase correlation 0.68 against 0.65 without, in 120
epochs against 320)."""
EPOCHS = 120
"""Epochs of the shipped model (2,040 steps); without distillation the held-out NLL plateaued from about
epoch 130 (-448.13; -448.15 best at 222 of 320)."""
EXECUTION = PyTorchExecutionConfig(accelerator="cpu", scheduler=Scheduler.REDUCE_LR_ON_PLATEAU, seed=42,
                                   enable_progress_bar=False)


def model(generator: Generator = GENERATOR, architecture: Architecture = ARCHITECTURE) -> ModelConfig:
    """The default model's architecture: N=64, gridsize 1, n_filters_scale 1, ``architecture`` (the CNN's
    last stage ``generator``)."""
    return ModelConfig(N=64, gridsize=1, n_filters_scale=1, architecture=architecture, generator=generator)


logger = logging.getLogger(__name__)


def build_default_bundle(out: Path = DEFAULT_OUT, *, run_dir: Path, scan: Path = REAL_SCAN,
                         epochs: int = EPOCHS, generator: Generator = GENERATOR,
                         architecture: Architecture = ARCHITECTURE, distill_weight: float = DISTILL_WEIGHT) -> Path:
    """Split the real scan, train (continuing ``run_dir/checkpoints/last.ckpt`` when an interrupted
    run left one), export the checkpoint with the lowest held-out NLL into ``out`` (replacing it);
    the manifest records the recipe, steps, wall time and that NLL."""
    from export.bundle_writer import export_checkpoint
    from export.options import ExportOptions
    from training.run import AUTO, train_from_config

    config = model(generator, architecture)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_raw, test_raw = spatial_split(load_siemens_star(scan, config.N), axis="y", fraction=0.5)
    train_file, test_file = train_raw.to_file(run_dir / "train.npz"), test_raw.to_file(run_dir / "test.npz")
    training = TrainingConfig(model=config, train_data_file=train_file, test_data_file=test_file, nepochs=epochs,
                              nphotons=float(train_raw.metadata["nphotons"]), refine_probe=True,
                              distill_weight=distill_weight, output_dir=run_dir)
    result = train_from_config(training, EXECUTION, resume=AUTO)
    logger.info("trained: %s", result.summary.to_json())
    if out.exists():
        shutil.rmtree(out)
    export_checkpoint(result.best_checkpoint or result.last_checkpoint, out, data=train_file,
                      options=ExportOptions(name="ptychopinn"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"bundle folder (default {DEFAULT_OUT})")
    parser.add_argument("--run-dir", type=Path, default=PROJECT_ROOT / "runs" / "default",
                        help="training run folder (checkpoints, logs, the split scans)")
    parser.add_argument("--epochs", type=int, default=EPOCHS)
    parser.add_argument("--generator", choices=values(Generator), default=GENERATOR)
    parser.add_argument("--architecture", choices=values(Architecture), default=ARCHITECTURE)
    parser.add_argument("--distill-weight", type=float, default=DISTILL_WEIGHT,
                        help="weight of the solver's object of the training half as a target (0: physics only)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    print(build_default_bundle(args.out, run_dir=args.run_dir, epochs=args.epochs, generator=args.generator,
                               architecture=args.architecture, distill_weight=args.distill_weight))


if __name__ == "__main__":
    main()
