"""The NPZ scan contract (PtychoPINN's, see the README's Data contract) and its loaders. numpy only.

A scan NPZ holds:

================  ==============================  ==========================================
key               shape, dtype                    meaning
================  ==============================  ==========================================
``diffraction``   (S, N, N) float32               amplitudes = sqrt(counts), fftshifted (DC at
(or ``diff3d``)                                   the centre); legacy (N, N, S) and (S, N, N, 1)
                                                  are accepted; integer dtypes are counts
``xcoords``       (S,) float64                    patch-centre column, object pixels
``ycoords``       (S,) float64                    patch-centre row, object pixels
``x/ycoords_start`` (S,) float64, optional        nominal positions (default: x/ycoords)
``probeGuess``    (N, N) or (P, N, N) complex64   probe (P incoherent modes) on the object grid
``objectGuess``   (H, W) complex64, optional      ground truth or reference object
``scan_index``    (S,) int64, optional            scan id per pattern (default zeros)
``Y``             (S, N, N) complex64, optional   ground-truth patches
``_metadata``     JSON string, optional           provenance (e.g. ``nphotons``, origin); ``pixel_size_m``:
                                                 object pixel size in metres (:mod:`ptycho_torch.pixel_size`)
================  ==============================  ==========================================

Every violation raises :class:`~ptycho_torch.errors.DataContractError` (a ``ValueError``) naming
the key and the expected shape/dtype.
"""

from __future__ import annotations

import bz2
import io
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ptycho_torch.errors import DataContractError
from ptycho_torch.grouping import GroupedScan, build_grouped_data, group_indices
from ptycho_torch.scan_checks import prepare_scan, to_amplitudes

logger = logging.getLogger(__name__)

REQUIRED_KEYS = ("xcoords", "ycoords", "probeGuess")


def counts_to_amplitude(counts: ArrayLike, *, source: str = "patterns") -> np.ndarray:
    """Return float32 ``sqrt(counts)`` (computed in float64, so uint16 cannot overflow); logs it."""
    counts = np.asarray(counts)
    logger.info("%s: converting %s counts (intensity) to amplitudes sqrt(counts)", source, counts.dtype)
    _require_finite_nonnegative("diffraction", counts, "counts")
    return to_amplitudes(counts, "counts")[0]


def _fail(key: str, expected: str, got: Any, fix: str) -> DataContractError:
    return DataContractError(f"`{key}` must be {expected}, got {got}; {fix}")


def _require_finite_nonnegative(key: str, values: np.ndarray, what: str) -> None:
    bad = np.count_nonzero(~np.isfinite(values)) if values.dtype.kind in "fc" else 0
    if bad:
        raise _fail(key, f"finite {what}", f"{bad} NaN/inf values", "remove or repair those patterns")
    if values.size and values.dtype.kind in "fi" and values.min() < 0:
        raise _fail(key, f"non-negative {what}", f"minimum {values.min()}", "store |amplitude| or photon counts")


@dataclass(eq=False, repr=False)
class RawData:
    """One scan in the contract's layout (see the module docstring); validated on construction."""

    xcoords: np.ndarray
    ycoords: np.ndarray
    xcoords_start: np.ndarray
    ycoords_start: np.ndarray
    diff3d: np.ndarray
    probeGuess: np.ndarray
    scan_index: np.ndarray
    objectGuess: np.ndarray | None = None
    Y: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.diff3d = np.asarray(self.diff3d, dtype=np.float32)
        if self.diff3d.ndim != 3 or self.diff3d.shape[1] != self.diff3d.shape[2]:
            raise _fail("diffraction", "(S, N, N) float32 with square N x N patterns",
                        f"shape {self.diff3d.shape}", "pass one square pattern per scan position")
        n_pos, n = self.diff3d.shape[0], self.diff3d.shape[1]
        _require_finite_nonnegative("diffraction", self.diff3d, "amplitudes")
        for key in ("xcoords", "ycoords", "xcoords_start", "ycoords_start"):
            value = np.asarray(getattr(self, key), dtype=np.float64)
            if value.shape != (n_pos,):
                raise _fail(key, f"(S,) float64 with S = {n_pos} (one per pattern)", f"shape {value.shape}",
                            "give exactly one position per diffraction pattern")
            if not np.isfinite(value).all():
                raise _fail(key, "finite (S,) float64", "NaN/inf values", "drop or repair those positions")
            setattr(self, key, value)
        self.scan_index = np.asarray(self.scan_index, dtype=np.int64)
        if self.scan_index.shape != (n_pos,):
            raise _fail("scan_index", f"(S,) int64 with S = {n_pos}", f"shape {self.scan_index.shape}",
                        "give one scan id per pattern or omit the key")
        probe = np.asarray(self.probeGuess, dtype=np.complex64)
        if probe.ndim == 3 and probe.shape[-1] == 1:
            probe = probe[..., 0]
        if probe.ndim not in (2, 3) or probe.shape[-2:] != (n, n):
            raise _fail("probeGuess", f"(N, N) = ({n}, {n}) or (P, {n}, {n}) complex64 matching the patterns",
                        f"shape {probe.shape}", "resample the probe to the detector size N")
        if not np.isfinite(probe).all():
            raise _fail("probeGuess", "finite complex64", "NaN/inf values", "repair the probe")
        self.probeGuess = probe
        if self.objectGuess is not None:
            self.objectGuess = np.asarray(self.objectGuess, dtype=np.complex64)
            if self.objectGuess.ndim != 2:
                raise _fail("objectGuess", "(H, W) complex64", f"shape {self.objectGuess.shape}",
                            "store one 2-D complex object or omit the key")
        if self.Y is not None:
            Y = np.asarray(self.Y, dtype=np.complex64)
            Y = Y[..., 0] if Y.ndim == 4 and Y.shape[-1] == 1 else Y
            if Y.shape != self.diff3d.shape:
                raise _fail("Y", f"(S, N, N) = {self.diff3d.shape} complex64", f"shape {Y.shape}",
                            "store one ground-truth patch per pattern or omit the key")
            self.Y = Y

    @property
    def N(self) -> int:
        """Detector (and patch) size in pixels."""
        return int(self.diff3d.shape[-1])

    @property
    def positions(self) -> np.ndarray:
        """``(S, 2)`` float64 ``[x, y]`` patch centres in object pixels, one row per pattern (a new array)."""
        return np.column_stack([self.xcoords, self.ycoords])

    def __len__(self) -> int:
        return int(self.diff3d.shape[0])

    def __repr__(self) -> str:
        obj = None if self.objectGuess is None else self.objectGuess.shape
        return f"RawData(S={len(self)}, N={self.N}, probe={self.probeGuess.shape}, objectGuess={obj})"

    @classmethod
    def from_coords_without_pc(
        cls,
        xcoords: ArrayLike,
        ycoords: ArrayLike,
        diff3d: ArrayLike,
        probeGuess: ArrayLike,
        scan_index: ArrayLike | None = None,
        objectGuess: ArrayLike | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> RawData:
        """Build a scan whose start positions equal its positions (no position correction)."""
        x, y = np.asarray(xcoords, dtype=np.float64), np.asarray(ycoords, dtype=np.float64)
        index = np.zeros(x.shape[0], dtype=np.int64) if scan_index is None else np.asarray(scan_index)
        obj = None if objectGuess is None else np.asarray(objectGuess)
        return cls(x, y, x, y, np.asarray(diff3d), np.asarray(probeGuess), index, obj, metadata=dict(metadata or {}))

    @classmethod
    def from_file(cls, path: str | Path, *, counts: bool | None = None) -> RawData:
        """Load a contract NPZ (or ``.npz.bz2``).

        ``counts``: True converts the patterns from counts to amplitudes, False never does, None
        (default) converts only integer dtypes. Either conversion is logged.
        """
        return cls.from_arrays(_read_arrays(path), counts=counts, source=str(path))

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any], *, counts: bool | None = None, source: str = "arrays") -> RawData:
        """Build a scan from a mapping with the NPZ contract's keys (see the module docstring)."""
        missing = [key for key in REQUIRED_KEYS if key not in arrays]
        if "diffraction" not in arrays and "diff3d" not in arrays:
            missing.insert(0, "diffraction")
        if missing:
            raise DataContractError(
                f"`{missing[0]}` is missing from {source}: a scan needs diffraction (or diff3d) (S, N, N) "
                f"float32, xcoords/ycoords (S,) float64 and probeGuess (N, N) complex64; "
                f"found keys {sorted(arrays)}"
            )
        x = np.asarray(arrays["xcoords"], dtype=np.float64).reshape(-1)
        y = np.asarray(arrays["ycoords"], dtype=np.float64).reshape(-1)
        key = "diffraction" if "diffraction" in arrays else "diff3d"
        patterns = _canonical_layout(np.asarray(arrays[key]), x.shape[0], key, source)
        if patterns.dtype.kind not in "fiu":
            raise _fail(key, "(S, N, N) float32 amplitudes", f"dtype {patterns.dtype}", "store real amplitudes")
        if counts or (counts is None and patterns.dtype.kind in "iu"):
            patterns = counts_to_amplitude(patterns, source=source)
        metadata = arrays.get("_metadata")
        return cls(
            x, y,
            np.asarray(arrays.get("xcoords_start", x), dtype=np.float64).reshape(-1),
            np.asarray(arrays.get("ycoords_start", y), dtype=np.float64).reshape(-1),
            patterns,
            arrays["probeGuess"],
            arrays.get("scan_index", np.zeros(x.shape[0], dtype=np.int64)),
            arrays.get("objectGuess"),
            arrays.get("Y"),
            metadata=_decode_metadata(metadata),
        )

    def to_file(self, path: str | Path) -> Path:
        """Write the scan as a contract NPZ (``diffraction`` key, amplitudes) and return its path."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Any] = {
            "diffraction": self.diff3d, "xcoords": self.xcoords, "ycoords": self.ycoords,
            "xcoords_start": self.xcoords_start, "ycoords_start": self.ycoords_start,
            "probeGuess": self.probeGuess, "scan_index": self.scan_index,
            "_metadata": np.array(json.dumps(self.metadata)),
        }
        if self.objectGuess is not None:
            arrays["objectGuess"] = self.objectGuess
        if self.Y is not None:
            arrays["Y"] = self.Y
        with path.open("wb") as handle:
            np.savez(handle, **arrays)
        return path

    def subset(self, indices: ArrayLike) -> RawData:
        """Return the scan restricted to ``indices`` (or a boolean mask); probe and object are shared."""
        idx = np.asarray(indices)
        return RawData(
            self.xcoords[idx], self.ycoords[idx], self.xcoords_start[idx], self.ycoords_start[idx],
            self.diff3d[idx], self.probeGuess, self.scan_index[idx], self.objectGuess,
            None if self.Y is None else self.Y[idx], metadata=dict(self.metadata),
        )

    def generate_grouped_data(
        self, N: int, K: int | None = None, n_groups: int | None = None, gridsize: int = 1, seed: int | None = None
    ) -> GroupedScan:
        """Group the scan into a :class:`~ptycho_torch.grouping.GroupedScan` (see :mod:`ptycho_torch.grouping`)."""
        if N != self.N:
            raise _fail("N", f"the scan's pattern size {self.N}", N, "build the model for the data's N")
        nn_indices = group_indices(self.xcoords, self.ycoords, gridsize=gridsize, K=K, n_groups=n_groups, seed=seed)
        return build_grouped_data(
            self.diff3d, self.xcoords, self.ycoords, self.xcoords_start, self.ycoords_start, nn_indices,
            Y=self.Y, objectGuess=self.objectGuess,
        )


def scan_metadata(path: str | Path) -> dict[str, Any]:
    """A scan file's ``_metadata`` without reading its patterns ({} when it has none, e.g. the tike layout).
    Raises :class:`DataContractError` for a missing or unreadable file."""
    with _open_npz(path) as npz:
        return _decode_metadata(npz["_metadata"] if "_metadata" in npz.files else None)


def _decode_metadata(value: Any) -> dict[str, Any]:
    return json.loads(str(value)) if value is not None else {}


def _read_arrays(path: str | Path) -> dict[str, np.ndarray]:
    """Read every array of an ``.npz`` or ``.npz.bz2`` file (no pickles)."""
    with _open_npz(path) as npz:
        return {key: npz[key] for key in npz.files}


def _open_npz(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise DataContractError(f"`path` must be an existing .npz or .npz.bz2 file, got {str(path)!r}")
    try:
        if path.suffix == ".bz2":
            return np.load(io.BytesIO(bz2.decompress(path.read_bytes())), allow_pickle=False)
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise DataContractError(f"`path` must be a readable NPZ file, got {str(path)!r} ({error})") from error


def _canonical_layout(patterns: np.ndarray, n_pos: int, key: str, source: str) -> np.ndarray:
    """Return (S, N, N): squeeze a trailing channel and transpose legacy (N, N, S)."""
    if patterns.ndim == 4 and patterns.shape[-1] == 1:
        patterns = patterns[..., 0]
    if patterns.ndim == 3 and patterns.shape[0] != n_pos and patterns.shape[2] == n_pos:
        logger.info("%s: `%s` has the legacy (N, N, S) layout %s; transposing to (S, N, N)",
                    source, key, patterns.shape)
        patterns = np.ascontiguousarray(patterns.transpose(2, 0, 1))
    if patterns.ndim != 3 or patterns.shape[0] != n_pos:
        raise _fail(key, f"(S, N, N) with S = {n_pos} = len(xcoords)", f"shape {patterns.shape}",
                    "store one pattern per position, patterns first")
    return patterns


def fourier_resample_probe(probe: np.ndarray, n: int) -> np.ndarray:
    """Resample a probe (..., L, L) to (..., n, n) by cropping (n < L) or zero-padding (n > L) its
    centred orthonormal spectrum: ``ifft2_ortho(crop_centre(fft2_ortho(P)))``.

    With the object resampled onto the same n-pixel field of view (pixels ``L/n`` times larger),
    ``|fft2(P_n * O_n, 'ortho')|**2`` equals the central ``n x n`` of ``|fft2(P * O, 'ortho')|**2``,
    so a cropped detector keeps its measured counts.
    """
    size = probe.shape[-1]
    spectrum = np.fft.fftshift(np.fft.fft2(probe, norm="ortho"), axes=(-2, -1))
    if n <= size:
        lo = (size - n) // 2
        spectrum = spectrum[..., lo:lo + n, lo:lo + n]
    else:
        lo = (n - size) // 2
        pad = [(0, 0)] * (probe.ndim - 2) + [(lo, n - size - lo)] * 2
        spectrum = np.pad(spectrum, pad)
    return np.fft.ifft2(np.fft.ifftshift(spectrum, axes=(-2, -1)), norm="ortho").astype(np.complex64)


def load_siemens_star(path: str | Path, n: int | None = None) -> RawData:
    """Load the tike Siemens-star scan (``siemens-star-small.npz.bz2``) as a contract scan.

    The file holds unshifted photon counts ``data`` (1, S, 128, 128), a probe (..., 128, 128) and
    ``scan`` (1, S, 2) = [row, column] of each probe window's top-left corner (see
    data/README.md). Returned: fftshifted amplitudes, positions shifted so the smallest
    corner is at 0 and converted to window centres (+N/2). ``n`` crops the detector centrally to
    ``n x n``: object pixels become ``128/n`` times larger, so positions scale by ``n/128`` and the
    probe is Fourier-cropped (:func:`fourier_resample_probe`) to stay consistent with the counts.
    """
    return _from_tike(_read_arrays(path), n, str(path))


def _from_tike(arrays: dict[str, np.ndarray], n: int | None, source: str) -> RawData:
    missing = [key for key in ("data", "probe", "scan") if key not in arrays]
    if missing:
        raise DataContractError(f"`{missing[0]}` is missing from {source}: a tike scan needs data "
                                f"(1, S, L, L), probe (..., L, L) and scan (1, S, 2); found {sorted(arrays)}")
    counts, probe, scan = arrays["data"], arrays["probe"], arrays["scan"]
    counts = counts.reshape(-1, *counts.shape[-2:])
    size = counts.shape[-1]
    n = size if n is None else n
    if not (isinstance(n, int) and 2 <= n <= size and n % 2 == 0):
        raise _fail("n", f"an even detector crop in [2, {size}]", n, "choose e.g. 64 or 128")
    lo = (size - n) // 2
    shifted = np.fft.fftshift(counts, axes=(-2, -1))[:, lo:lo + n, lo:lo + n]
    probe = probe.reshape(-1, size, size)
    probe = fourier_resample_probe(probe[0] if probe.shape[0] == 1 else probe, n)
    corners = scan.reshape(-1, 2).astype(np.float64)
    corners -= corners.min(axis=0)
    factor = n / size
    centre_y, centre_x = corners[:, 0] * factor + n / 2, corners[:, 1] * factor + n / 2
    metadata = {
        "nphotons": float(shifted.sum(axis=(-2, -1)).mean()),  # measured dose: mean counts per cropped pattern
        "source": "AdvancedPhotonSource/tike tests/data/siemens-star-small.npz.bz2 (APS Velociprobe)",
        "licence": "UChicago Argonne BSD-3-style (tike)",
        "detector_crop": n,
        "object_pixel_scale": size / n,
    }
    return RawData.from_coords_without_pc(
        centre_x, centre_y, counts_to_amplitude(shifted, source=source), probe, metadata=metadata
    )


def load_scan(path: str | Path, n: int | None = None, *, strict: bool = True) -> RawData:
    """Load any supported scan file (read once): a contract NPZ, or the tike layout
    (``data``/``probe``/``scan``).

    ``n`` is the patch size the caller needs: a tike scan's detector is cropped to it; a contract
    file is returned as stored and must already be at ``n`` (None: any N).

    Every scan passes :func:`~ptycho_torch.scan_checks.prepare_scan` (the checks of every entry
    point): an optional ``badPixelMask`` (N, N) bool key and detected bad pixels are inpainted, and
    the report (with its warnings) is stored in ``metadata["scan_report"]``. ``strict=False`` keeps
    an implausible scan (for ``inspect``): the reasons it would be refused go to the report's ``refusals``.
    """
    arrays = _read_arrays(path)
    if {"data", "probe", "scan"} <= arrays.keys():
        raw = _from_tike(arrays, n, str(path))
    else:
        raw = RawData.from_arrays(arrays, source=str(path))
        if n is not None and raw.N != n:
            raise _fail("n", f"the stored pattern size {raw.N} for the contract NPZ {path}", n,
                        "use a model with that N, or simulate/crop the scan at the model's N")
    scan = prepare_scan(raw.diff3d, raw.positions, units="amplitude",
                        mask=arrays.get("badPixelMask"), strict=strict)
    raw.diff3d = scan.amplitudes
    raw.metadata["scan_report"] = scan.report.to_json()
    return raw


def spatial_split(raw: RawData, axis: str = "y", fraction: float = 0.5) -> tuple[RawData, RawData]:
    """Split a scan along ``axis`` into (train, test): train holds the ``round(fraction * S)``
    positions with the smallest coordinate (``y``: the top rows), test the rest.
    """
    if axis not in ("x", "y"):
        raise _fail("axis", "'x' or 'y'", repr(axis), "split along columns (x) or rows (y)")
    if not 0.0 < fraction < 1.0:
        raise _fail("fraction", "in (0, 1)", fraction, "e.g. 0.5 for halves")
    coords = raw.xcoords if axis == "x" else raw.ycoords
    order = np.argsort(coords, kind="stable")
    cut = int(round(fraction * len(raw)))
    if cut == 0 or cut == len(raw):
        raise _fail("fraction", f"large enough to leave both parts non-empty for S = {len(raw)}", fraction,
                    "use more positions or a fraction nearer 0.5")
    return raw.subset(np.sort(order[:cut])), raw.subset(np.sort(order[cut:]))
