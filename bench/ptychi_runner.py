"""Run a pty-chi LSQML reconstruction on CPU; executed by bench/.ptychi-venv's python, not the project's.

    bench/.ptychi-venv/bin/python -I bench/ptychi_runner.py IN.npz OUT.npz

IN.npz (written by :mod:`bench.ptychi`): ``counts`` (S, N, N) float32 photon counts with the DC at
the centre (fftshifted, the project's layout), ``x``/``y`` (S,) float64 patch centres in object
pixels (the project's convention: patch pixel (r, c) sees object row y - N/2 + r), ``probe``
(P, N, N) complex64 such that ``|fft2(probe * patch, norm='ortho')|**2`` are expected counts,
``object_shape`` (2,) and ``settings`` (a JSON string, see :func:`reconstruct` and :func:`_lsqml_options`).
OUT.npz: ``object`` (H, W) complex64 on the same object grid, ``probe`` (P, N, N) complex64 (same
ortho convention), ``positions`` (S, 2) float64 [x, y] in the input's convention (corrected when
``settings['optimize_positions']``), ``loss`` (epochs,) float64 (pty-chi's displayed loss per
epoch), ``epochs``, ``build_s`` and ``run_s`` (wall seconds of task construction and of the epochs),
``snapshots`` (K, H, W) the object every ``snapshot_every`` epochs with ``snapshot_epochs``,
``snapshot_s`` (seconds of construction + epochs when it was taken; copying snapshots is not timed)
and ``snapshot_positions`` (K, S, 2), ``versions`` and ``options`` (pty-chi's own dump of every
option it ran with, JSON). This file imports only numpy, torch and ptychi: it never imports the project.
"""

from __future__ import annotations

import json
import sys
import time

import numpy as np
import ptychi
import ptychi.api as api
import torch
from ptychi.api.task import PtychographyTask


def _lsqml_options(settings: dict) -> api.LSQMLOptions:
    """pty-chi's LSQML options for :func:`reconstruct`: SGD with step size 1 on the object (and the probe
    when ``settings['optimize_probe']``), Gaussian noise, CPU. Positions are fixed unless
    ``settings['optimize_positions']``: then pty-chi's position correction runs with its own defaults
    (gradient method, Fourier differentiation, step 0.3, updates clipped to 0.1 px and 10 x their
    median absolute deviation) except where ``settings['positions']`` names an option
    (``step_size``, ``update_magnitude_limit``, ``clip_update_magnitude_by_mad``, ``correction_type``,
    ``start_epoch``)."""
    options = api.LSQMLOptions()
    options.data_options.fft_shift = True  # our patterns have the DC at the centre
    options.object_options.optimizable = True
    options.object_options.optimizer = api.Optimizers.SGD
    options.object_options.step_size = 1
    options.object_options.determine_position_origin_coords_by = api.ObjectPosOriginCoordsMethods.SPECIFIED
    options.object_options.position_origin_coords = np.array([0.0, 0.0])
    options.probe_options.optimizable = bool(settings["optimize_probe"])
    options.probe_options.optimizer = api.Optimizers.SGD
    options.probe_options.step_size = 1
    options.probe_position_options.optimizable = bool(settings.get("optimize_positions", False))
    positions = settings.get("positions") or {}
    correction = options.probe_position_options.correction_options
    if "step_size" in positions:
        options.probe_position_options.step_size = float(positions["step_size"])
    if "update_magnitude_limit" in positions:
        limit = positions["update_magnitude_limit"]
        correction.update_magnitude_limit = None if limit is None else float(limit)
    if "clip_update_magnitude_by_mad" in positions:
        correction.clip_update_magnitude_by_mad = bool(positions["clip_update_magnitude_by_mad"])
    if "correction_type" in positions:
        correction.correction_type = api.PositionCorrectionTypes(positions["correction_type"])
    if "start_epoch" in positions:
        options.probe_position_options.optimization_plan.start = int(positions["start_epoch"])
    options.reconstructor_options.batch_size = int(settings["batch_size"])
    options.reconstructor_options.noise_model = api.NoiseModels.GAUSSIAN
    options.reconstructor_options.num_epochs = int(settings["max_epochs"])
    options.reconstructor_options.default_device = api.Devices.CPU
    options.reconstructor_options.random_seed = int(settings["seed"])
    options.reconstructor_options.rescale_probe_intensity_in_first_epoch = bool(settings["optimize_probe"])
    return options


def reconstruct(counts: np.ndarray, x: np.ndarray, y: np.ndarray, probe: np.ndarray,
                object_shape: tuple[int, int], settings: dict) -> dict:
    """LSQML (pty-chi's own test settings: SGD, step size 1, Gaussian noise model) until the displayed
    loss improves by less than ``settings['tolerance']`` (relative) over the last ``settings['chunk']``
    epochs (and, when positions are corrected, they moved less than ``settings['position_tolerance_px']``,
    default 0.05 px rms, over them: the rule of our ``iterations="auto"``), or ``settings['max_epochs']``;
    checked (and the object kept) every ``settings['snapshot_every']`` epochs (default: ``chunk``; a
    divisor of ``chunk`` when positions are corrected)."""
    torch.set_num_threads(int(settings["threads"]))
    N = counts.shape[-1]
    pad = N  # object buffer margin so every probe window lies inside it
    height, width = object_shape
    options = _lsqml_options(settings)

    start = time.perf_counter()
    task = PtychographyTask(
        options,
        diffraction_data=counts,
        object_data=torch.ones((1, height + 2 * pad, width + 2 * pad), dtype=torch.complex64),
        # pty-chi's far field is the unnormalised FFT: probe / N gives the same counts as our ortho FFT
        probe_data=torch.from_numpy(probe[None] / N),
        # pty-chi indexes a window by its geometric centre: pixel index y - 1/2 for our centre convention
        probe_position_y_px=y - 0.5 + pad,
        probe_position_x_px=x - 0.5 + pad,
    )
    build_s = time.perf_counter() - start
    chunk, tolerance, max_epochs = int(settings["chunk"]), float(settings["tolerance"]), int(settings["max_epochs"])
    every = int(settings.get("snapshot_every", chunk))
    run_s, epochs, converged = 0.0, 0, False
    optimize_positions = bool(settings.get("optimize_positions", False))
    position_tolerance = float(settings.get("position_tolerance_px", 0.05))
    trail: dict[int, np.ndarray] = {}
    snapshots, snapshot_epochs, snapshot_s, snapshot_positions = [], [], [], []

    def positions_xy() -> np.ndarray:  # pty-chi's [y, x] window centres back to our [x, y] patch centres
        yx = task.get_data_to_cpu("probe_positions", as_numpy=True).astype(np.float64)
        return np.stack([yx[:, 1] + 0.5 - pad, yx[:, 0] + 0.5 - pad], axis=1)

    trail[0] = positions_xy()
    while epochs < max_epochs and not converged:
        start = time.perf_counter()
        task.run(n_epochs=min(every, max_epochs - epochs))
        run_s += time.perf_counter() - start  # snapshots below are not timed
        losses = task.reconstructor.loss_tracker.table["loss"].to_numpy(dtype=np.float64)
        epochs = len(losses)
        # converged: the displayed loss improved by less than `tolerance` (relative) over the last `chunk` epochs
        converged = epochs > chunk and losses[-chunk - 1] - losses[-1] < tolerance * losses[-chunk - 1]
        now = positions_xy()
        trail[epochs] = now
        if converged and optimize_positions:  # and the positions moved less than `position_tolerance_px` rms
            before = trail.get(epochs - chunk)
            converged = before is not None and float(np.sqrt(np.mean(np.sum((now - before) ** 2, axis=1)))) < (
                position_tolerance)
        snapshots.append(task.get_data_to_cpu("object", as_numpy=True)[0, pad:pad + height, pad:pad + width])
        snapshot_epochs.append(epochs)
        snapshot_s.append(build_s + run_s)
        snapshot_positions.append(now)
    obj = task.get_data_to_cpu("object", as_numpy=True)[0, pad:pad + height, pad:pad + width]
    probe_out = task.get_data_to_cpu("probe", as_numpy=True)[0] * N
    return {"object": obj.astype(np.complex64), "probe": probe_out.astype(np.complex64), "positions": positions_xy(),
            "snapshot_positions": np.asarray(snapshot_positions, np.float64),
            "options": json.dumps(options.get_dict(), default=str),
            "loss": task.reconstructor.loss_tracker.table["loss"].to_numpy(dtype=np.float64),
            "epochs": epochs, "converged": converged, "build_s": build_s, "run_s": run_s,
            "snapshots": np.asarray(snapshots, np.complex64), "snapshot_epochs": np.asarray(snapshot_epochs),
            "snapshot_s": np.asarray(snapshot_s),
            "versions": json.dumps({"ptychi": getattr(ptychi, "__version__", "unknown"), "torch": torch.__version__})}


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    with np.load(argv[0]) as npz:
        inputs = {key: npz[key] for key in npz.files}
    result = reconstruct(inputs["counts"], inputs["x"], inputs["y"], inputs["probe"],
                         tuple(int(v) for v in inputs["object_shape"]), json.loads(str(inputs["settings"])))
    np.savez(argv[1], **result)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
