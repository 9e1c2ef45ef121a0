"""The legacy global configuration dictionary ``params.cfg``.

PtychoPINN's TensorFlow code reads a module-level dict at call time; callers that switch backends
keep using it, so it exists here too. It is filled from the dataclasses by
:func:`ptycho_torch.config.update_legacy_dict` at every workflow entry, and snapshotted (as JSON)
into model archives and bundles. Nothing in this project reads it to build a model: the
dataclasses are the source of truth and this dict mirrors them; the fields it carries only for
PtychoPINN compatibility, which nothing reads, warn when set (:data:`ptycho_torch.config.NO_EFFECT`).
"""

from __future__ import annotations

from typing import Any, Final

DEFAULT_CFG: Final[dict[str, Any]] = {
    "N": 64,
    "gridsize": 1,
    "offset": 4,
    "max_position_jitter": 10,
    "n_filters_scale": 2,
    "batch_size": 16,
    "nepochs": 50,
    "nphotons": 1e9,
    "intensity_scale.trainable": False,
    "probe.trainable": False,
    "probe.mask": False,
    "probe.big": True,
    "object.big": True,
    "pad_object": True,
    "probe_scale": 4.0,
    "amp_activation": "sigmoid",
    "nll_weight": 1.0,
    "mae_weight": 0.0,
    "realspace_weight": 0.0,
    "realspace_mae_weight": 0.0,
    "model_type": "pinn",
    "positions.provided": True,
    "h5_path": "wts.h5",
    "data_source": "generic",
}

cfg: dict[str, Any] = dict(DEFAULT_CFG)


def reset() -> None:
    """Restore ``cfg`` to the defaults (tests and long-lived processes use this)."""
    cfg.clear()
    cfg.update(DEFAULT_CFG)
