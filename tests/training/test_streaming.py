"""The simulated corpus and its streaming dataset: reproducible shards, every pattern once per
epoch, disjoint equal DDP shares, groups within one scan, flat memory as the corpus grows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from ptycho_torch.corpus import Corpus, write_corpus
from ptycho_torch.errors import DataContractError
from ptycho_torch.normalization import input_scale
from ptycho_torch.simulation import default_probe
from training import streaming
from training.streaming import CorpusStream

PROJECT_ROOT = Path(__file__).resolve().parents[2]
N = 32
SCANS, POSITIONS = 6, 20  # 3 shards of 2 scans


def _write(root: Path, seed: int = 0) -> Corpus:
    gold = np.random.default_rng(9).uniform(0.8, 1.0, (80, 80)).astype(np.complex64)
    return write_corpus(root, probe=default_probe(N), probe_origin="default", scans=SCANS,
                        positions_per_scan=POSITIONS, doses=(1e4, 1e6), gold_source=gold, object_size=72,
                        scans_per_shard=2, seed=seed)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return _write(tmp_path_factory.mktemp("corpus"))


def test_corpus_is_seeded_sharded_and_described(corpus: Corpus, tmp_path: Path) -> None:
    assert corpus.N == N and corpus.patterns == SCANS * POSITIONS
    assert [s.patterns for s in corpus.shards] == [2 * POSITIONS] * 3
    assert [s.start for s in corpus.shards] == [0, 40, 80]
    manifest = json.loads((corpus.root / "corpus.json").read_text())
    assert [r["object"] for r in manifest["scan_records"]] == ["gold", "lines", "grf"] * 2
    assert {r["nphotons"] for r in manifest["scan_records"]} <= {1e4, 1e6}
    again, other = _write(tmp_path / "again"), _write(tmp_path / "other", seed=1)
    first = corpus.shards[0].open()["diffraction"]
    np.testing.assert_array_equal(first, again.shards[0].open()["diffraction"])
    assert not np.array_equal(first, other.shards[0].open()["diffraction"])
    arrays = corpus.shards[1].open()
    for scan_id in np.unique(arrays["scan"]):  # the stored scale is the scan's own input scale
        rows = arrays["scan"] == scan_id
        assert arrays["scale"][rows][0] == pytest.approx(input_scale(arrays["diffraction"][rows]), rel=1e-6)
        counts = np.asarray(arrays["diffraction"][rows], np.float64) ** 2
        assert counts.sum(axis=(1, 2)).mean() == pytest.approx(arrays["nphotons"][rows][0], rel=0.1)


def test_one_epoch_yields_every_pattern_once_in_a_new_order_each_epoch(corpus: Corpus) -> None:
    stream = CorpusStream(corpus, batch_size=1, seed=3)
    epochs = [[int(item["index"]) for item in stream] for _ in range(2)]
    assert sorted(epochs[0]) == sorted(epochs[1]) == list(range(corpus.patterns))
    assert epochs[0] != epochs[1]
    item = next(iter(CorpusStream(corpus)))
    assert item["diffraction"].shape == (1, N, N) and item["diffraction"].dtype == torch.float32
    assert item["offsets"].shape == (1, 2) and float(item["nphotons"]) in (1e4, 1e6)


def test_ddp_ranks_read_disjoint_shards_and_yield_equal_whole_batches(corpus: Corpus, monkeypatch) -> None:
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(streaming, "_rank_and_world", lambda rank=rank: (rank, 2))
        stream = CorpusStream(corpus, batch_size=8, seed=0)
        seen.append([int(i) for batch in DataLoader(stream, batch_size=8) for i in batch["index"]])
    # 3 shards of 40 over 2 ranks: shares of 80 and 40 -> both yield 40 (5 whole batches)
    assert len(seen[0]) == len(seen[1]) == 40
    shard_of = [{i // 40 for i in s} for s in seen]
    assert not shard_of[0] & shard_of[1]
    monkeypatch.setattr(streaming, "_rank_and_world", lambda: (0, 4))
    with pytest.raises(DataContractError, match="one shard per DDP rank"):
        next(iter(CorpusStream(corpus)))


def test_gridsize_2_groups_stay_inside_one_scan_and_workers_split_the_work(corpus: Corpus) -> None:
    scan_of = np.concatenate([s.open()["scan"] for s in corpus.shards])
    positions = np.concatenate([s.open()["positions"] for s in corpus.shards])
    arrays = corpus.shards[0].open()
    nn, offsets = streaming.shard_groups(arrays, gridsize=2, neighbor_count=6, seed=0)
    assert nn.shape == (40, 4) and offsets.shape == (40, 4, 2)
    assert all(len(set(scan_of[row])) == 1 for row in nn)
    np.testing.assert_allclose(offsets.sum(axis=1), 0, atol=1e-4)  # relative to the group centre
    np.testing.assert_allclose(offsets, -(positions[nn] - positions[nn].mean(axis=1, keepdims=True)), atol=1e-4)
    loader = DataLoader(CorpusStream(corpus, gridsize=2, neighbor_count=6), batch_size=4, num_workers=2)
    batches = list(loader)
    assert sum(len(b["index"]) for b in batches) == corpus.patterns  # one group per position, once
    assert all(b["diffraction"].shape[1:] == (4, N, N) for b in batches)


RSS_SCRIPT = textwrap.dedent("""
    import resource, sys
    from pathlib import Path
    import numpy as np
    from torch.utils.data import DataLoader
    from ptycho_torch.corpus import Corpus
    from training.streaming import CorpusStream

    corpus = Corpus.open(sys.argv[1])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    total = 0.0
    for batch in DataLoader(CorpusStream(corpus, batch_size=64), batch_size=64):
        total += float(batch["diffraction"].sum())
    print(corpus.patterns, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
""")


def _fake_corpus(root: Path, shards: int, patterns: int = 1024, n: int = 64) -> Path:
    """A corpus of random patterns (16 MiB per shard at these sizes) with a valid manifest."""
    rng = np.random.default_rng(0)
    names = []
    for k in range(shards):
        folder = root / f"shard-{k:05d}"
        folder.mkdir(parents=True)
        np.save(folder / "diffraction.npy", rng.random((patterns, n, n), dtype=np.float32))
        np.save(folder / "positions.npy", rng.random((patterns, 2)) * 100)
        np.save(folder / "scan.npy", np.zeros(patterns, np.int32))
        np.save(folder / "scale.npy", np.ones(patterns, np.float32))
        np.save(folder / "nphotons.npy", np.full(patterns, 1e6, np.float32))
        names.append({"name": folder.name, "patterns": patterns})
    np.save(root / "probe.npy", np.ones((1, n, n), np.complex64))
    (root / "corpus.json").write_text(json.dumps({"format": "ptychopinn-corpus/1", "N": n, "shards": names}))
    return root


@pytest.mark.slow
def test_peak_memory_stays_flat_when_the_corpus_grows_4x(tmp_path: Path) -> None:
    script = tmp_path / "rss.py"
    script.write_text(RSS_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    growth = {}
    for shards in (2, 8):
        root = _fake_corpus(tmp_path / f"c{shards}", shards)
        done = subprocess.run([sys.executable, str(script), str(root)], capture_output=True, text=True, env=env,
                              timeout=300, check=True)
        patterns, kib = map(int, done.stdout.split())
        assert patterns == shards * 1024
        growth[shards] = kib / 1024  # MiB
    # 4x the data (32 -> 128 MiB of patterns) while the peak grows by less than one shard (16 MiB)
    assert growth[8] - growth[2] < 12, growth


def test_corpus_contrast_and_phase_ranges_bound_every_generated_object(tmp_path: Path) -> None:
    from ptycho_torch.corpus import scan_object

    for seed in range(8):  # the object a weak-contrast corpus draws stays inside its ranges
        obj = scan_object("grf", 48, np.random.default_rng(seed), None, contrast=(0.03, 0.3), phase_range=(0.1, 0.8))
        assert np.abs(obj).min() >= 0.7 - 1e-6 and np.abs(obj).max() <= 1 + 1e-6
        assert np.ptp(np.angle(obj)) <= 0.8 + 1e-6
    weak = write_corpus(tmp_path / "weak", probe=default_probe(N), probe_origin="default", scans=2, positions_per_scan=4,
                        doses=(1e6,), objects=("grf",), object_size=48, contrast=(0.03, 0.3), phase_range=(0.1, 0.8))
    manifest = json.loads((weak.root / "corpus.json").read_text())
    assert manifest["contrast"] == [0.03, 0.3] and manifest["phase_range"] == [0.1, 0.8]
    with pytest.raises(DataContractError, match="`contrast` must be a range"):
        write_corpus(tmp_path / "bad", probe=default_probe(N), probe_origin="default", scans=1, contrast=(0.5, 1.5))
