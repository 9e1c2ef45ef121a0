"""The string choices of the configuration and the reconstruct options, one :class:`~enum.StrEnum` each.

Each enum is the one list of the accepted values; the code that implements a choice keeps one table
from member to implementation beside it (``model.GENERATORS``, ``model.HEADS``,
``model.AMPLITUDE_ACTIVATIONS``, ``training.module.SCHEDULERS``, ``training.module.LOSS_WEIGHTS``,
``training.trainer.LOGGERS``, ``refinement.ALGORITHMS``, ``refinement.STARTS``). Every configuration field and reconstruct option
that is a choice is annotated with its enum and holds the member (a plain string is parsed on
construction); members compare and hash like their values, so a table answers a plain string
(``HEADS["tf"]``), and they leave as plain strings through ``ptycho_torch.config.to_primitives``
(checkpoints, which ``torch.load(weights_only=True)`` reads, YAML/JSON files). Dependency-free:
importing this module costs nothing.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from enum import StrEnum
from functools import cache
from typing import Final, TypeVar

__all__ = ["NAMED_SCALE_POLICIES", "AmpActivation", "Architecture", "Backend", "Generator", "GradientClipAlgorithm",
           "ArrayBackendName", "LoggerBackend", "LossMode", "ModelType", "RefineAlgorithm", "RefineStart", "ScalePolicy", "Scheduler", "StopReason", "Units",
           "check_table", "choice_fields", "parse", "values"]


class Architecture(StrEnum):
    """The generator family (PtychoPINN's ``architecture``): the CNN, a Fourier neural operator (FNO) or
    a factorised one (F-FNO); see :mod:`ptycho_torch.model`."""

    CNN = "cnn"
    FNO = "fno"
    FFNO = "ffno"


class Backend(StrEnum):
    """The framework a configuration runs on (PtychoPINN's ``backend``; this implementation is torch only)."""

    PYTORCH = "pytorch"


class GradientClipAlgorithm(StrEnum):
    """What gradient clipping bounds (Lightning's ``gradient_clip_algorithm``): the gradients' norm or each value."""

    NORM = "norm"
    VALUE = "value"


class Generator(StrEnum):
    """The generator's last decoder stage (see :class:`~ptycho_torch.config.ModelConfig`)."""

    TF = "tf"
    SMOOTH = "smooth"
    FULL = "full"
    TAPER = "taper"


class AmpActivation(StrEnum):
    """The amplitude head's activation."""

    SIGMOID = "sigmoid"
    SWISH = "swish"
    SILU = "silu"
    SOFTPLUS = "softplus"
    RELU = "relu"


class ModelType(StrEnum):
    """``pinn``: self-supervised through the physics; ``supervised``: against ground-truth patches."""

    PINN = "pinn"
    SUPERVISED = "supervised"


class LossMode(StrEnum):
    """The diffraction loss whose weight must be positive (``torch_loss_mode``)."""

    POISSON = "poisson"
    MAE = "mae"


class Scheduler(StrEnum):
    """The learning-rate schedule (PtychoPINN's names)."""

    DEFAULT = "Default"
    EXPONENTIAL = "Exponential"
    REDUCE_LR_ON_PLATEAU = "ReduceLROnPlateau"
    WARMUP_COSINE = "WarmupCosine"


class LoggerBackend(StrEnum):
    """Where a training run logs its metrics."""

    CSV = "csv"
    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"
    NONE = "none"


class RefineAlgorithm(StrEnum):
    """Iterative refinement's update rule: ``er`` error reduction over the whole scan, ``rpie`` regularised
    PIE in mini-batches, ``mpie`` rPIE with momentum between epochs (see :mod:`ptycho_torch.refinement`)."""

    ER = "er"
    RPIE = "rpie"
    MPIE = "mpie"


class StopReason(StrEnum):
    """Why a refinement ended: the requested ``iterations`` were done, the data fit ``converged``
    (``iterations="auto"``), or the ``time_limit`` was reached (the solver's reasons); or it was
    ``cancelled`` before it ended: a live session closed with ``cancel``, expired or shut down before
    its final round ran to its end (the session says so; the solver never does)."""

    ITERATIONS = "iterations"
    CONVERGED = "converged"
    TIME_LIMIT = "time_limit"
    CANCELLED = "cancelled"


class ArrayBackendName(StrEnum):
    """The array library the iterative solver runs on: ``numpy`` (CPU) or ``cupy`` (GPU, the ``gpu`` extra)."""

    NUMPY = "numpy"
    CUPY = "cupy"


class RefineStart(StrEnum):
    """Where refinement starts: the network's stitched object, or a flat object (amplitude 1, phase 0)."""

    NETWORK = "network"
    FLAT = "flat"


class ScalePolicy(StrEnum):
    """Where the network's ``scale`` input comes from: ``scan``, normalise by the scan's own patterns;
    ``bundle``, the value measured on the training data; ``explicit``, the request gives ``scale``."""

    SCAN = "scan"
    BUNDLE = "bundle"
    EXPLICIT = "explicit"


NAMED_SCALE_POLICIES: Final = (ScalePolicy.SCAN.value, ScalePolicy.BUNDLE.value)
"""The scale policies chosen by name (a flag, a setting, a bundle's default); ``explicit`` is what sending
a ``scale`` means."""


class Units(StrEnum):
    """What patterns hold: amplitudes (sqrt of counts, the project convention) or raw photon counts."""

    AMPLITUDE = "amplitude"
    COUNTS = "counts"


E = TypeVar("E", bound=StrEnum)
V = TypeVar("V")


def values(choice: type[StrEnum]) -> tuple[str, ...]:
    """The accepted values of ``choice`` as plain strings, in definition order."""
    return tuple(member.value for member in choice)


def parse(choice: type[E], name: str, value: object, error: Callable[[str], Exception]) -> E:
    """``value`` as a member of ``choice``, else raise ``error("`name` must be one of [...], got 'x'")``."""
    if isinstance(value, str):
        try:
            return choice(value)
        except ValueError:
            pass
    raise error(f"`{name}` must be one of {list(values(choice))}, got {value!r}")


@cache
def choice_fields(cls: type) -> dict[str, type[StrEnum]]:
    """``{field: its StrEnum}`` for the fields of dataclass ``cls`` annotated with a choice (``E`` or
    ``E | None``), in definition order: what configurations and options parse on construction."""
    found = {}
    for name, hint in typing.get_type_hints(cls).items():
        members = [a for a in typing.get_args(hint) if a is not type(None)] or [hint]
        if len(members) == 1 and isinstance(members[0], type) and issubclass(members[0], StrEnum):
            found[name] = members[0]
    return found


def check_table(choice: type[E], table: Mapping[E, V]) -> Mapping[E, V]:
    """Return ``table`` after checking it implements every member of ``choice`` and nothing else
    (at import, so a new member without an implementation fails at once, not on first use)."""
    if set(table) != set(choice):
        raise TypeError(f"the {choice.__name__} table must cover {list(values(choice))}, got "
                        f"{sorted(str(key) for key in table)}")
    return table
