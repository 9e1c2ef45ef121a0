"""A simulated training corpus that outgrows memory: many seeded scans in memory-mappable shards.

PtychoPINN generalises when it trains on many varied objects seen through the instrument's probe
(arXiv 2509.25104); one beamline scan of a few hundred patterns is memorised instead (issue 11).
:func:`write_corpus` simulates ``scans`` scans, each with its own object, contrast, phase range,
dose and random positions, through one probe, and writes them as shards of plain ``.npy`` files
that a reader maps (``numpy.load(mmap_mode='r')``) one shard at a time::

    corpus.json                  manifest: format, N, probe origin, recipe, seed, shards
    probe.npy                    (P, N, N) complex64, the probe every scan was simulated with
    shard-00000/diffraction.npy  (S, N, N) float32 amplitudes sqrt(counts), fftshifted
    shard-00000/positions.npy    (S, 2) float64 patch centres [x, y] in object pixels
    shard-00000/scan.npy         (S,) int32 scan id (groups never mix scans)
    shard-00000/scale.npy        (S,) float32 input scale of the pattern's scan (design.md section 2)
    shard-00000/nphotons.npy     (S,) float32 mean photons per pattern of the scan

Objects (``objects``): ``gold`` (random 90-degree rotations, flips and crops of a source object,
e.g. the shipped gold-ball reconstruction with the held-out region cut away), ``lines`` and ``grf``
(:mod:`ptycho_torch.simulation`), each remapped to a random amplitude contrast and phase range.
Everything derives from ``seed`` and the scan index, so a corpus is reproducible and a larger one
extends a smaller one with the same first scans.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ptycho_torch.errors import DataContractError
from ptycho_torch.normalization import input_scale
from ptycho_torch.simulation import grf_object, lines_object, scan_positions, simulate_scan

FORMAT = "ptychopinn-corpus/1"
MANIFEST = "corpus.json"
ARRAYS = ("diffraction", "positions", "scan", "scale", "nphotons")
OBJECT_KINDS = ("gold", "lines", "grf")
#: ranges the per-scan object is drawn from: amplitude contrast (1 - min amplitude), phase range (rad)
CONTRAST = (0.02, 0.5)
PHASE_RANGE = (0.1, 2.0)


@dataclass(frozen=True)
class Shard:
    """One shard of a corpus: its folder, pattern count, and the corpus index of its first pattern."""

    path: Path
    patterns: int
    start: int

    def open(self) -> dict[str, np.ndarray]:
        """The shard's arrays, memory-mapped read-only (nothing is read until indexed)."""
        return {name: np.load(self.path / f"{name}.npy", mmap_mode="r") for name in ARRAYS}


@dataclass(frozen=True)
class Corpus:
    """A corpus on disk: ``N``, the probe, and its shards (see the module docstring)."""

    root: Path
    N: int
    shards: tuple[Shard, ...]
    manifest: dict[str, Any]

    @property
    def patterns(self) -> int:
        return sum(shard.patterns for shard in self.shards)

    def probe(self) -> np.ndarray:
        return np.load(self.root / "probe.npy")

    @classmethod
    def open(cls, root: str | Path) -> Corpus:
        """Read ``root/corpus.json``; raise :class:`DataContractError` when it is not a corpus."""
        root = Path(root)
        try:
            manifest = json.loads((root / MANIFEST).read_text())
        except (OSError, ValueError) as error:
            raise DataContractError(f"`corpus` must be a folder written by write_corpus with a readable {MANIFEST}, "
                                    f"got {str(root)!r} ({error})") from error
        if manifest.get("format") != FORMAT:
            raise DataContractError(f"`corpus` format must be {FORMAT!r}, got {manifest.get('format')!r} in {root}")
        counts = [int(s["patterns"]) for s in manifest["shards"]]
        starts = np.cumsum([0, *counts[:-1]]).tolist()
        shards = tuple(Shard(root / s["name"], n, int(start))
                       for s, n, start in zip(manifest["shards"], counts, starts, strict=True))
        return cls(root, int(manifest["N"]), shards, manifest)


def _remap(texture: np.ndarray, contrast: float, phase_range: float, rng: np.random.Generator) -> np.ndarray:
    """Amplitude in [1 - contrast, 1] and phase in +-phase_range/2 from two (rolled) views of a texture."""
    t = (texture - texture.min()) / max(float(np.ptp(texture)), 1e-12)
    u = np.roll(t, tuple(rng.integers(0, t.shape[0], size=2)), axis=(0, 1)) if rng.random() < 0.5 else t
    return ((1 - contrast * t) * np.exp(1j * phase_range * (u - 0.5))).astype(np.complex64)


def _gold(source: np.ndarray, size: int, rng: np.random.Generator, phase_scale: float) -> np.ndarray:
    """A random ``size`` crop of ``source``, rotated by a multiple of 90 degrees, maybe flipped,
    its phase (about its mean) scaled by ``phase_scale``."""
    if min(source.shape) < size:
        raise DataContractError(f"`gold_source` must be at least {size}x{size} px, got {source.shape}")
    r, c = (int(rng.integers(0, n - size + 1)) for n in source.shape)
    crop = np.rot90(source[r:r + size, c:c + size], k=int(rng.integers(4)))
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    phase = np.angle(crop)
    phase = phase - np.angle(np.mean(np.exp(1j * phase)))
    return (np.abs(crop) * np.exp(1j * phase_scale * phase)).astype(np.complex64)


def scan_object(kind: str, size: int, rng: np.random.Generator, gold_source: np.ndarray | None, *,
                contrast: tuple[float, float] = CONTRAST, phase_range: tuple[float, float] = PHASE_RANGE) -> np.ndarray:
    """One corpus object of ``kind`` (see the module docstring), ``size x size`` complex64; a ``lines``
    or ``grf`` object's amplitude contrast and phase range are drawn uniformly from ``contrast`` and
    ``phase_range`` (a ``gold`` crop keeps its own contrast, its phase scaled 0.5-3x)."""
    if kind == "gold":
        if gold_source is None:
            raise DataContractError("`objects` includes 'gold' but no gold_source was given")
        return _gold(gold_source, size, rng, float(rng.uniform(0.5, 3.0)))
    contrast_drawn, phase_drawn = rng.uniform(*contrast), rng.uniform(*phase_range)
    if kind == "lines":
        texture = np.abs(lines_object(size, rng, n_lines=int(rng.integers(50, 400))))
    elif kind == "grf":
        texture = np.abs(grf_object(size, rng, correlation_length=float(rng.uniform(2.0, 10.0))))
    else:
        raise DataContractError(f"`objects` must be chosen from {list(OBJECT_KINDS)}, got {kind!r}")
    return _remap(texture, contrast_drawn, phase_drawn, rng)


def _simulate_corpus_scan(rng: np.random.Generator, index: int, kind: str, modes: np.ndarray, size: int,
                          positions_per_scan: int, doses: Sequence[float], gold_source: np.ndarray | None,
                          ranges: dict[str, tuple[float, float]]) -> tuple[dict[str, np.ndarray], float]:
    """Scan ``index`` of a corpus: its object (``ranges``: :func:`scan_object`'s ``contrast`` and
    ``phase_range``), random positions, dose and Poisson patterns, all drawn from ``rng``; returns its
    shard arrays (the keys of :data:`ARRAYS`, one row per pattern) and its dose."""
    obj = scan_object(kind, size, rng, gold_source, **ranges)
    x, y = scan_positions(positions_per_scan, size, modes.shape[-1], "random", rng)
    dose = float(doses[int(rng.integers(len(doses)))])
    raw = simulate_scan(obj, modes, x, y, nphotons=dose, seed=int(rng.integers(2**32)))
    return {
        "diffraction": raw.diff3d.astype(np.float32),
        "positions": np.column_stack([x, y]),
        "scan": np.full(len(x), index, np.int32),
        "scale": np.full(len(x), input_scale(raw.diff3d), np.float32),
        "nphotons": np.full(len(x), dose, np.float32),
    }, dose


def _write_shard(folder: Path, parts: dict[str, list[np.ndarray]]) -> dict[str, Any]:
    """Write each array of ``parts`` (its scans concatenated) as ``folder/<key>.npy``; the manifest's entry."""
    folder.mkdir(exist_ok=True)
    for key, values in parts.items():
        np.save(folder / f"{key}.npy", np.concatenate(values))
    return {"name": folder.name, "patterns": int(sum(len(v) for v in parts["scan"]))}


def write_corpus(
    out: str | Path,
    *,
    probe: np.ndarray,
    probe_origin: str,
    scans: int,
    positions_per_scan: int = 256,
    doses: Sequence[float] = (1e5, 1e6, 1e7),
    objects: Sequence[str] = OBJECT_KINDS,
    gold_source: np.ndarray | None = None,
    object_size: int | None = None,
    scans_per_shard: int = 16,
    seed: int = 0,
    contrast: tuple[float, float] = CONTRAST,
    phase_range: tuple[float, float] = PHASE_RANGE,
) -> Corpus:
    """Simulate ``scans`` scans with ``probe`` ((N, N) or (P, N, N)) into the folder ``out``.

    Each scan: an object drawn by :func:`scan_object` (kind cycled through ``objects``),
    ``positions_per_scan`` uniform random positions, a dose drawn from ``doses`` (photons per
    pattern), Poisson noise. ``object_size`` defaults to ``2 N``. ``contrast`` and ``phase_range``
    bound the amplitude contrast (1 - min amplitude) and phase range (rad) of the ``lines`` and
    ``grf`` objects (default :data:`CONTRAST`, :data:`PHASE_RANGE`; e.g. narrower for a corpus of
    weak-contrast objects). Returns the opened corpus.
    """
    modes = np.asarray(probe, dtype=np.complex64).reshape(-1, *np.shape(probe)[-2:])
    N = modes.shape[-1]
    size = 2 * N if object_size is None else object_size
    if scans < 1 or positions_per_scan < 1 or scans_per_shard < 1:
        raise DataContractError(f"`scans`, `positions_per_scan` and `scans_per_shard` must be >= 1, got "
                                f"{scans}, {positions_per_scan}, {scans_per_shard}")
    for name, (lo, hi) in (("contrast", contrast), ("phase_range", phase_range)):
        if not 0 <= lo <= hi or (name == "contrast" and hi > 1):
            raise DataContractError(f"`{name}` must be a range (low, high) with 0 <= low <= high"
                                    f"{' <= 1' if name == 'contrast' else ''}, got {(lo, hi)}")
    ranges = {"contrast": (float(contrast[0]), float(contrast[1])),
              "phase_range": (float(phase_range[0]), float(phase_range[1]))}
    for kind in objects:
        if kind not in OBJECT_KINDS:
            raise DataContractError(f"`objects` must be chosen from {list(OBJECT_KINDS)}, got {kind!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    np.save(out / "probe.npy", modes)
    shards, scan_records = [], []
    for first in range(0, scans, scans_per_shard):
        parts: dict[str, list[np.ndarray]] = {name: [] for name in ARRAYS}
        for index in range(first, min(first + scans_per_shard, scans)):
            kind = objects[index % len(objects)]
            arrays, dose = _simulate_corpus_scan(np.random.default_rng([seed, index]), index, kind, modes, size,
                                                 positions_per_scan, doses, gold_source, ranges)
            for key, value in arrays.items():
                parts[key].append(value)
            scan_records.append({"scan": index, "object": kind, "nphotons": dose})
        shards.append(_write_shard(out / f"shard-{first // scans_per_shard:05d}", parts))
    manifest = {
        "format": FORMAT, "N": N, "probe": probe_origin, "seed": seed, "scans": scans,
        "positions_per_scan": positions_per_scan, "doses": [float(d) for d in doses], "objects": list(objects),
        "object_size": size, "contrast": list(ranges["contrast"]), "phase_range": list(ranges["phase_range"]),
        "shards": shards,
        "scan_records": scan_records,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return Corpus.open(out)
