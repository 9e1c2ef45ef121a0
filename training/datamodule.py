"""The Lightning data module: grouped scans (:class:`~ptycho_torch.grouping.GroupedScan`) as batches.

Groups are built once, before training; the arrays are shared with torch without copying
(``torch.from_numpy``) and each item is a view, so no epoch copies the data set. A batch is a dict:

===============  ================  ==================================================
``diffraction``  (B, C, N, N) f32  raw amplitudes (the generator applies ``scale``)
``scale``        (B,) f32          the scan's input normalisation
``offsets``      (B, C, 2) f32     relative offsets ``[x, y]`` (grouping sign)
``index``        (B,) i64          group index in its data set
``amplitude``    (B, C, N, N) f32  ground truth (supervised mode), or the distillation target
``phase``        (B, C, N, N) f32  (``distill_weight`` > 0: the training scan's ``Y``, training groups only)
===============  ================  ==================================================
"""

from __future__ import annotations

from collections.abc import Iterator

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from ptycho_torch.choices import ModelType
from ptycho_torch.config import TrainingConfig
from ptycho_torch.data import RawData
from ptycho_torch.errors import ConfigError, DataContractError
from ptycho_torch.grouping import GroupedScan

#: fraction of the training groups held out for validation when no test scan is given
VAL_FRACTION = 0.05


class GroupedDataset(Dataset):
    """Items of one grouped scan; holds channels-last arrays and hands out channels-first views."""

    def __init__(self, grouped: GroupedScan, *, with_labels: bool) -> None:
        self.diffraction = torch.from_numpy(grouped.diffraction)  # (B, N, N, C)
        self.offsets = torch.from_numpy(grouped.coords_relative[:, 0].transpose(0, 2, 1).astype(np.float32))
        self.scale = torch.tensor(grouped.input_scale, dtype=torch.float32)
        self.input_scale = float(grouped.input_scale)
        self.labels = torch.from_numpy(grouped.Y) if with_labels else None

    def __len__(self) -> int:
        return self.diffraction.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = {
            "diffraction": self.diffraction[index].permute(2, 0, 1),
            "scale": self.scale,
            "offsets": self.offsets[index],
            "index": torch.tensor(index, dtype=torch.int64),
        }
        if self.labels is not None:
            patch = self.labels[index].permute(2, 0, 1)
            item["amplitude"] = patch.abs()
            item["phase"] = patch.angle()
        return item


def group_scan(raw: RawData, training: TrainingConfig, *, seed: int) -> GroupedScan:
    """Subsample (``n_subsample``) and group a scan as ``training`` asks."""
    model = training.model
    if raw.N != model.N:
        raise DataContractError(
            f"`N` of the model must equal the scan's pattern size {raw.N}, got {model.N}; pass --n {raw.N}"
        )
    if training.n_subsample is not None and training.n_subsample < len(raw):
        rng = np.random.default_rng(training.subsample_seed)
        raw = raw.subset(np.sort(rng.choice(len(raw), training.n_subsample, replace=False)))
    return raw.generate_grouped_data(model.N, K=training.neighbor_count, n_groups=training.n_groups,
                                     gridsize=model.gridsize, seed=seed)


class ResumableSampler(DistributedSampler):
    """This rank's share of a shuffle fixed by ``(seed, epoch)`` that can start part-way through an epoch.

    :class:`~torch.utils.data.DistributedSampler` draws the permutation from ``seed + epoch`` and
    splits it between ranks; :meth:`resume_at` makes the next pass over ``epoch`` skip the first
    ``batches`` batches of this rank's share, so a run resumed from a mid-epoch checkpoint trains on
    exactly the batches the interrupted run had not reached, in the same order.
    """

    def __init__(self, dataset: Dataset, *, num_replicas: int, rank: int, seed: int, batch_size: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed)
        self.batch_size = batch_size
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches: int) -> None:
        """Skip the first ``batches`` batches the next time ``epoch`` is iterated."""
        self._resume = (epoch, batches)

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        if self._resume is not None and self._resume[0] == self.epoch:
            indices = indices[self._resume[1] * self.batch_size:]
            self._resume = None
        return iter(indices)


class GroupedDataModule(L.LightningDataModule):
    """Train and validation loaders over grouped scans.

    ``val`` is the test scan when given; otherwise a seeded :data:`VAL_FRACTION` of the training
    groups is held out. Each rank gets its own share (:class:`ResumableSampler` for training, a
    sequential :class:`~torch.utils.data.DistributedSampler` for validation). The module's
    checkpoint state is the position in the current epoch, so resuming continues at the exact batch.
    The Trainer must be built with ``use_distributed_sampler=False`` (these samplers already split).
    """

    def __init__(
        self, train: RawData, val: RawData | None, training: TrainingConfig, *, seed: int = 42, num_workers: int = 0
    ) -> None:
        super().__init__()
        supervised = training.model.model_type == ModelType.SUPERVISED
        distilling = training.distill_weight > 0
        grouped = group_scan(train, training, seed=seed)
        if supervised and grouped.Y is None:
            raise ConfigError(
                "`model_type` 'supervised' needs ground truth, got a training scan without Y or objectGuess; "
                "use model_type 'pinn' or a file with Y/objectGuess"
            )
        if distilling and grouped.Y is None:
            raise ConfigError("`distill_weight` > 0 needs the solver's targets as the training scan's Y; "
                              "train through training.trainer.train, which refines the scan first")
        self.train_set: Dataset = GroupedDataset(grouped, with_labels=supervised or distilling)
        self.training_scale = self.train_set.input_scale
        """The training scan's input normalisation (the ``scale`` the ``bundle`` policy uses)."""
        self.probe = train.probeGuess
        if val is None:
            order = np.random.default_rng(seed).permutation(len(self.train_set))
            n_val = max(1, int(round(VAL_FRACTION * len(order))))
            if n_val >= len(order):
                raise DataContractError(
                    f"`train_data` must hold at least 2 groups to hold out validation, got {len(order)}; "
                    "pass --test-data or use a larger scan"
                )
            self.val_set: Dataset = Subset(self.train_set, order[:n_val].tolist())
            self.train_set = Subset(self.train_set, order[n_val:].tolist())
        else:
            val_grouped = group_scan(val, training, seed=seed + 1)
            if supervised and val_grouped.Y is None:
                raise ConfigError("`model_type` 'supervised' needs ground truth in the test scan too (Y or objectGuess)")
            self.val_set = GroupedDataset(val_grouped, with_labels=supervised)
        self.batch_size = training.batch_size
        self.num_workers = num_workers
        self.seed = seed
        self._resume: tuple[int, int] | None = None

    def _ranks(self) -> tuple[int, int]:
        trainer = self.trainer
        return (1, 0) if trainer is None else (trainer.world_size, trainer.global_rank)

    def _loader(self, dataset: Dataset, sampler: DistributedSampler) -> DataLoader:
        return DataLoader(dataset, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0)

    def train_dataloader(self) -> DataLoader:
        world, rank = self._ranks()
        sampler = ResumableSampler(self.train_set, num_replicas=world, rank=rank, seed=self.seed,
                                   batch_size=self.batch_size)
        if self._resume is not None:
            sampler.resume_at(*self._resume)
        return self._loader(self.train_set, sampler)

    def val_dataloader(self) -> DataLoader:
        world, rank = self._ranks()
        return self._loader(self.val_set, DistributedSampler(self.val_set, num_replicas=world, rank=rank,
                                                             shuffle=False))

    def state_dict(self) -> dict[str, int]:
        """Where training is in its epoch: ``{"epoch", "batches_done"}`` (batches of this rank's share)."""
        trainer = self.trainer
        if trainer is None:
            return {}
        return {"epoch": trainer.current_epoch,
                "batches_done": trainer.fit_loop.epoch_loop.batch_progress.current.processed}  # type: ignore[attr-defined]  # Lightning types `current` as its base tracker

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume the training shuffle of ``state["epoch"]`` after its first ``batches_done`` batches."""
        if state:
            self._resume = (int(state["epoch"]), int(state["batches_done"]))
