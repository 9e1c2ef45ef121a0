"""Stream a simulated corpus (:mod:`ptycho_torch.corpus`) that does not fit in memory.

:class:`CorpusStream` is an ``IterableDataset`` over the corpus' shards. Each epoch the shards are
shuffled (seeded by ``seed`` and the epoch) and dealt out: shard ``i`` of that order goes to DDP
rank ``i % world_size`` and, inside a rank, to DataLoader worker ``j % workers``, so every
process reads only its own shards. A shard is memory-mapped when its turn comes, its groups are
formed then (lazy grouping, never across scans), its patterns are yielded in a shuffled order,
and the mapping is dropped before the next shard: resident memory stays at about one shard
whatever the size of the corpus. Every rank yields the same number of items per epoch (the
smallest rank's share, rounded down to a whole number of batches) so DDP ranks never wait on
each other.

Items have the keys of :mod:`training.datamodule` (``index``: the corpus index of the group's
first member) plus ``nphotons`` (the scan's dose: the Poisson model's intensity scale is per item).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ptycho_torch.corpus import Corpus, Shard
from ptycho_torch.errors import DataContractError
from ptycho_torch.grouping import group_indices, relative_offsets


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard_groups(arrays: dict[str, np.ndarray], *, gridsize: int, neighbor_count: int, seed: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(nn_indices (G, C), offsets (G, C, 2) float32)`` of one shard, grouped scan by scan."""
    scan = np.asarray(arrays["scan"])
    if gridsize == 1:
        return np.arange(len(scan))[:, None], np.zeros((len(scan), 1, 2), np.float32)
    positions = np.asarray(arrays["positions"])
    indices, offsets = [], []
    for scan_id in np.unique(scan):
        members = np.flatnonzero(scan == scan_id)
        x, y = positions[members, 0], positions[members, 1]
        local = group_indices(x, y, gridsize=gridsize, K=neighbor_count, seed=seed + int(scan_id))
        indices.append(members[local])
        offsets.append(relative_offsets(x, y, local).astype(np.float32))
    return np.concatenate(indices), np.concatenate(offsets)


class CorpusStream(IterableDataset):
    """Items of a corpus, shard by shard (see the module docstring)."""

    def __init__(self, corpus: Corpus, *, shards: tuple[Shard, ...] | None = None, gridsize: int = 1,
                 neighbor_count: int = 4, batch_size: int = 1, seed: int = 0, shuffle: bool = True,
                 split_ranks: bool = True) -> None:
        self.shards = corpus.shards if shards is None else shards
        if sum(s.patterns for s in self.shards) == 0:
            raise DataContractError(f"`corpus` {corpus.root} holds no patterns")
        self.corpus = corpus
        self.shuffle = shuffle
        self.split_ranks = split_ranks
        self.gridsize = gridsize
        self.neighbor_count = neighbor_count
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def _deal(self) -> tuple[list[Shard], int]:
        """This rank's shards in this epoch's order, and the number of items every rank yields."""
        rank, world = _rank_and_world() if self.split_ranks else (0, 1)
        count = len(self.shards)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(count) if self.shuffle else np.arange(count)
        if count < world:
            raise DataContractError(f"`corpus` must have at least one shard per DDP rank ({world}), got {count}; "
                                    "write it with smaller scans_per_shard")
        dealt = [[self.shards[i] for i in order[r::world]] for r in range(world)]
        share = min(sum(s.patterns for s in shards) for shards in dealt)
        return dealt[rank], share - share % self.batch_size if share >= self.batch_size else share

    def __len__(self) -> int:
        return self._deal()[1]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        shards, quota = self._deal()
        self.epoch += 1  # the next iteration is the next epoch (each worker keeps its own copy in step)
        worker = get_worker_info()
        workers, worker_id = (1, 0) if worker is None else (worker.num_workers, worker.id)
        available = [sum(s.patterns for s in shards[w::workers]) for w in range(workers)]
        quota = min(available[worker_id], max(quota - sum(available[:worker_id]), 0))  # earlier workers fill first
        rng = np.random.default_rng([self.seed, self.epoch, worker_id])
        emitted = 0
        for shard in shards[worker_id::workers]:
            arrays = shard.open()
            nn, offsets = shard_groups(arrays, gridsize=self.gridsize, neighbor_count=self.neighbor_count,
                                       seed=self.seed + self.epoch)
            for g in rng.permutation(len(nn)) if self.shuffle else range(len(nn)):
                if emitted >= quota:
                    return
                yield {
                    "diffraction": torch.from_numpy(np.asarray(arrays["diffraction"][nn[g]])),
                    "scale": torch.tensor(float(arrays["scale"][nn[g, 0]])),
                    "nphotons": torch.tensor(float(arrays["nphotons"][nn[g, 0]])),
                    "offsets": torch.from_numpy(offsets[g]),
                    "index": torch.tensor(shard.start + int(nn[g, 0]), dtype=torch.int64),
                }
                emitted += 1
            del arrays  # unmap this shard before the next one


class CorpusDataModule(L.LightningDataModule):
    """Training batches streamed from a corpus; validation on ``val`` (a dataset, e.g. a grouped
    scan) or else on the corpus' last shard (every rank validates all of it)."""

    def __init__(self, corpus: Corpus, *, gridsize: int, neighbor_count: int, batch_size: int, seed: int,
                 num_workers: int = 0, val: torch.utils.data.Dataset | None = None) -> None:
        super().__init__()
        train_shards = corpus.shards if val is not None or len(corpus.shards) < 2 else corpus.shards[:-1]
        if val is None and len(corpus.shards) < 2:
            raise DataContractError(f"`corpus` {corpus.root} needs at least 2 shards to hold one out for validation, "
                                    f"got {len(corpus.shards)}; pass a validation scan or write more shards")
        stream = functools.partial(CorpusStream, corpus, gridsize=gridsize, neighbor_count=neighbor_count,
                                   batch_size=batch_size, seed=seed)
        self.stream = stream(shards=train_shards)
        self.val_set = val if val is not None else stream(shards=corpus.shards[-1:], shuffle=False, split_ranks=False)
        self.batch_size = batch_size
        self.num_workers = num_workers

    def train_dataloader(self) -> DataLoader:
        if self.trainer is not None:
            self.stream.epoch = self.trainer.current_epoch  # a resumed run continues the shuffle sequence
        return DataLoader(self.stream, batch_size=self.batch_size, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size)
