"""Writing a reconstruction to disk: the files scientists open (no torch).

Shared by the in-process workflow (:mod:`ptycho_torch.workflows.components`) and both paths of
``ptychopinn reconstruct``, so every path writes the same files into one folder:

=============================== =============================================================
``reconstructed_amplitude.png`` amplitude with a colour bar and a scale bar (gray)
``reconstructed_phase.png``     phase in radians, colour bar and scale bar (twilight, -pi..pi)
``reconstructed_amplitude.tif`` float32 amplitude; ImageJ calibration when the pixel size is known
``reconstructed_phase.tif``     float32 phase in radians; same calibration
``reconstruction.npz``          ``amplitude``, ``phase``, ``coverage``, ``origin``, ``pixel_size_m``,
                                ``probe`` (P, N, N), ``positions`` (S, 2) ``[x, y]`` object pixels
``reconstruction.cxi``          CXI/HDF5 product, layout below
=============================== =============================================================

CXI layout (CXI 1.5 names where one exists, https://www.cxidb.org/cxi.html)::

    /cxi_version                               150
    /entry_1/start_time, program_name          ISO time; "ptychopinn-serve <version>"
    /entry_1/image_1/data                      (H, W) complex64 object, amplitude * exp(1j * phase)
    /entry_1/image_1/data_type, data_space     "object", "real"
    /entry_1/image_1/x_pixel_size, y_pixel_size  metres (only when the pixel size is known)
    /entry_1/image_1/coverage                  (H, W) float32 summed stitching weights (0 = no patch)
    /entry_1/image_1/origin                    [x0, y0]: object-pixel position of canvas pixel (0, 0)
    /entry_1/image_1/positions_px              (S, 2) [x, y] scan positions, object pixels, patch centres
                                               (attribute ``refined``: corrected by the refinement)
    /entry_1/image_2/data                      (P, N, N) complex64 probe modes, data_type "probe"
                                               (attribute ``refined``: refined with the object)
    /entry_1/sample_1/geometry_1/translation   (S, 3) metres [x, y, 0] (only when the pixel size is known)
    /entry_1/data_1                            soft link to image_1 (CXI's default plottable data)
    /entry_1/process_1/                        model, model_version, source, command; data_fit/ (figures);
                                               refinement/ (iterations, stop_reason, stopped, ...);
                                               ``ptychopinn reconstruct`` adds refine_iterations (done)
                                               and refine_iterations_requested (a number or "auto")

The probe and positions are those of the result: refined when the reconstruction refined them (as
``ProductInfo.refinement`` says), else the scan's.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ptycho_torch.errors import DataContractError
from ptycho_torch.stitching import StitchResult

CXI_VERSION = 150


@dataclass(frozen=True)
class ProductInfo:
    """What a reconstruction product records besides the object; every field is optional."""

    pixel_size_m: float | None = None
    """Object pixel size in metres (square pixels); None when the scan does not say."""
    probe: npt.NDArray[np.complexfloating] | None = None
    """``(N, N)`` or ``(P, N, N)`` probe (modes) on the object grid."""
    positions: npt.NDArray[np.floating] | None = None
    """``(S, 2)`` ``[x, y]`` scan positions in object pixels, patch centres."""
    model: str | None = None
    """Model name (a bundle name, a server's model, or a training archive)."""
    model_version: str | None = None
    source: str | None = None
    """The scan file that was reconstructed."""
    data_fit: Mapping[str, Any] | None = None
    """Data-fit figures (``DataFit.to_json()``: NLL, R-factor, outliers) when the path computed them."""
    extra: Mapping[str, Any] = field(default_factory=dict)
    """Further scalars for ``/entry_1/process_1`` (e.g. the input scale used, timings)."""
    refinement: Mapping[str, Any] | None = None
    """What the refinement did (:attr:`~ptycho_torch.pipeline.Reconstruction.refinement`) when it ran; its
    ``refine_probe``/``refine_positions`` say whether :attr:`probe`/:attr:`positions` are refined ones."""

    def refined(self, what: str) -> bool:
        """Whether ``what`` (``probe`` or ``positions``) was refined (``refine_<what>`` in :attr:`refinement`)."""
        return bool((self.refinement or {}).get(f"refine_{what}", False))


def save_outputs(
    amplitude: np.ndarray, phase: np.ndarray, results: dict[str, Any] | None, output_prefix: str | Path,
    *, info: ProductInfo | None = None,
) -> dict[str, Path]:
    """Write the files of the module docstring into the folder ``output_prefix``; return their
    paths by kind (``amplitude_png``, ``phase_png``, ``amplitude_tif``, ``phase_tif``, ``npz``, ``cxi``).

    ``results`` carries the stitch when there is one: a ``stitched`` :class:`StitchResult`, or
    ``coverage`` and ``origin`` entries. Raises :class:`DataContractError` when ``amplitude`` and
    ``phase`` are not matching 2-D images or ``info.pixel_size_m`` is not a positive number.
    """
    info = info or ProductInfo()
    amplitude = np.squeeze(amplitude).astype(np.float32, copy=False)
    phase = np.squeeze(phase).astype(np.float32, copy=False)
    if amplitude.ndim != 2 or phase.shape != amplitude.shape:
        raise DataContractError(f"`amplitude` and `phase` must be matching 2-D images, got shapes "
                                f"{amplitude.shape} and {phase.shape}")
    pixel = info.pixel_size_m
    if pixel is not None and not (math.isfinite(pixel) and pixel > 0):
        raise DataContractError(f"`pixel_size_m` must be a positive number of metres, got {pixel!r}")
    out = Path(output_prefix)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"amplitude_png": out / "reconstructed_amplitude.png", "phase_png": out / "reconstructed_phase.png",
             "amplitude_tif": out / "reconstructed_amplitude.tif", "phase_tif": out / "reconstructed_phase.tif",
             "npz": out / "reconstruction.npz", "cxi": out / "reconstruction.cxi"}
    write_png(amplitude, paths["amplitude_png"], title="amplitude", label="amplitude", cmap="gray",
              pixel_size_m=pixel)
    write_png(phase, paths["phase_png"], title="phase", label="phase [rad]", cmap="twilight",
              limits=(-np.pi, np.pi), pixel_size_m=pixel)
    write_tiff(amplitude, paths["amplitude_tif"], pixel_size_m=pixel)
    write_tiff(phase, paths["phase_tif"], pixel_size_m=pixel)

    arrays: dict[str, Any] = {"amplitude": amplitude, "phase": phase}
    coverage, origin = _stitch_geometry(results or {})
    if coverage is not None and origin is not None:
        arrays["coverage"] = np.asarray(coverage, dtype=np.float32)
        arrays["origin"] = np.asarray(origin, dtype=np.float64)
    if pixel is not None:
        arrays["pixel_size_m"] = np.float64(pixel)
    if info.probe is not None:
        arrays["probe"] = _probe_modes(info.probe)
    if info.positions is not None:
        arrays["positions"] = np.asarray(info.positions, np.float64)
    np.savez(paths["npz"], **arrays)
    write_cxi(paths["cxi"], amplitude, phase, info, coverage=arrays.get("coverage"), origin=arrays.get("origin"))
    return paths


def _stitch_geometry(results: Mapping[str, Any]) -> tuple[Any, Any]:
    stitched = results.get("stitched")
    if isinstance(stitched, StitchResult):
        return stitched.coverage, stitched.origin
    return results.get("coverage"), results.get("origin")


def scale_bar(width_px: int, pixel_size_m: float | None) -> tuple[float, str]:
    """A round scale-bar length of about a fifth of ``width_px``: ``(length in pixels, label)``,
    in nm/µm/mm when the pixel size is known, else in pixels."""
    unit_m, unit = (1.0, "px") if pixel_size_m is None else _unit(width_px * pixel_size_m)
    per_px = 1.0 if pixel_size_m is None else pixel_size_m / unit_m
    target = max(width_px * per_px / 5, per_px)
    magnitude = 10.0 ** math.floor(math.log10(target))
    length = max(step * magnitude for step in (1, 2, 5) if step * magnitude <= target)
    return length / per_px, f"{length:g} {unit}"


def _unit(extent_m: float) -> tuple[float, str]:
    for unit_m, unit in ((1e-3, "mm"), (1e-6, "µm"), (1e-9, "nm")):
        if extent_m >= 5 * unit_m:
            return unit_m, unit
    return 1e-9, "nm"


def write_png(image: np.ndarray, path: Path, *, title: str, label: str, cmap: str,
              limits: tuple[float, float] | None = None, pixel_size_m: float | None = None) -> Path:
    """``image`` as a figure with a colour bar (labelled ``label``) and a scale bar (see :func:`scale_bar`)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    height, width = image.shape
    fig = Figure(figsize=(6.4, 6.4 * height / width + 0.6), layout="constrained")
    ax = fig.subplots()
    vmin, vmax = limits if limits is not None else (None, None)
    shown = ax.imshow(image, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
    fig.colorbar(shown, ax=ax, shrink=0.85, label=label)
    length, text = scale_bar(width, pixel_size_m)
    bar = AnchoredSizeBar(ax.transData, length, text, "lower right", pad=0.4, color="white", frameon=True,
                          size_vertical=max(1.0, height / 100))
    bar.patch.set(facecolor="black", alpha=0.5, edgecolor="none")
    ax.add_artist(bar)
    ax.set_axis_off()
    ax.set_title(title)
    fig.savefig(path, dpi=100)
    return path


def write_tiff(image: np.ndarray, path: Path, *, pixel_size_m: float | None = None) -> Path:
    """``image`` as a float32 TIFF (ImageJ hyperstack), calibrated in µm per pixel when known."""
    import tifffile

    kwargs: dict[str, Any] = {}
    if pixel_size_m is not None:
        per_um = 1e-6 / pixel_size_m
        kwargs = {"resolution": (per_um, per_um), "metadata": {"unit": "um"}}
    tifffile.imwrite(path, np.asarray(image, np.float32), imagej=True, **kwargs)
    return path


def write_cxi(path: Path, amplitude: np.ndarray, phase: np.ndarray, info: ProductInfo, *,
              coverage: np.ndarray | None = None, origin: np.ndarray | None = None) -> Path:
    """The CXI/HDF5 product of the module docstring."""
    import h5py

    from ptycho_torch import __version__

    with h5py.File(path, "w") as f:
        f["cxi_version"] = CXI_VERSION
        entry = f.create_group("entry_1")
        entry["start_time"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        entry["program_name"] = f"ptychopinn-serve {__version__}"
        image = entry.create_group("image_1")
        image.create_dataset("data", data=(amplitude * np.exp(1j * phase)).astype(np.complex64), compression="gzip")
        image["data_type"], image["data_space"] = "object", "real"
        if info.pixel_size_m is not None:
            image["x_pixel_size"] = image["y_pixel_size"] = float(info.pixel_size_m)
        if coverage is not None:
            image.create_dataset("coverage", data=coverage, compression="gzip")
        if origin is not None:
            image["origin"] = np.asarray(origin, np.float64)
            image["origin"].attrs["description"] = "object-pixel [x, y] of canvas pixel (0, 0)"
        if info.positions is not None:
            positions = np.asarray(info.positions, np.float64)
            image["positions_px"] = positions
            image["positions_px"].attrs["description"] = "[x, y] object pixels, patch centres, x = column"
            image["positions_px"].attrs["refined"] = info.refined("positions")
            if info.pixel_size_m is not None:
                translation = np.column_stack([positions * info.pixel_size_m, np.zeros(len(positions))])
                entry.create_group("sample_1/geometry_1")["translation"] = translation
        if info.probe is not None:
            probe_group = entry.create_group("image_2")
            probe_group["data"] = _probe_modes(info.probe)
            probe_group["data"].attrs["refined"] = info.refined("probe")
            probe_group["data_type"], probe_group["data_space"] = "probe", "real"
        entry["data_1"] = h5py.SoftLink("/entry_1/image_1")
        process = entry.create_group("process_1")
        for key, value in {"model": info.model, "model_version": info.model_version, "source": info.source,
                           **info.extra}.items():
            if value is not None:
                process[key] = value if isinstance(value, (int, float)) else str(value)
        for name, figures in (("data_fit", info.data_fit), ("refinement", info.refinement)):
            if figures is not None:
                _write_figures(process.create_group(name), figures)
    return path


def _probe_modes(probe: npt.ArrayLike) -> npt.NDArray[np.complex64]:
    """``(N, N)`` or ``(P, N, N)`` -> ``(P, N, N)`` complex64."""
    array = np.asarray(probe, np.complex64)
    return array.reshape(-1, *array.shape[-2:])


def _write_figures(group: Any, figures: Mapping[str, Any]) -> None:
    """Numbers and lists of numbers as datasets, the rest (strings, None, records) as JSON text."""
    for key, value in figures.items():
        numeric = isinstance(value, (int, float)) or (isinstance(value, list) and all(
            isinstance(v, (int, float)) for v in value))
        group[key] = np.asarray(value, dtype=np.float64 if isinstance(value, list) else None) if numeric \
            else json.dumps(value)
