"""Checkpoint writes are atomic: staged beside the target (never in $TMPDIR on another filesystem),
and a write that fails part-way leaves the previous checkpoint whole."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

from training.checkpointing import AtomicCheckpointIO


@pytest.fixture
def tmpdir_on_another_filesystem(tmp_path, monkeypatch) -> Path:
    other = Path("/dev/shm") / f"ptychopinn-test-{os.getpid()}"
    if not Path("/dev/shm").is_dir() or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a filesystem other than the test's tmp_path")
    other.mkdir()
    monkeypatch.setenv("TMPDIR", str(other))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)  # re-read TMPDIR
    yield other
    shutil.rmtree(other)


def test_checkpoint_is_staged_in_its_own_directory_and_renamed(tmp_path, tmpdir_on_another_filesystem, monkeypatch):
    replaced = []
    real_replace = os.replace
    monkeypatch.setattr(os, "replace",
                        lambda src, dst: (replaced.append((Path(src), Path(dst))), real_replace(src, dst)))
    monkeypatch.setattr(shutil, "move", lambda *a, **k: pytest.fail("a checkpoint must not be moved/copied into place"))
    path = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"global_step": 7, "w": torch.arange(4.0)}, path)
    [(src, dst)] = replaced
    assert dst == path and src.parent == path.parent and src.name.startswith(".last.ckpt.")
    assert torch.load(path, weights_only=True)["global_step"] == 7
    assert sorted(p.name for p in path.parent.iterdir()) == ["last.ckpt"]
    assert not list(tmpdir_on_another_filesystem.iterdir())


def test_a_failed_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"global_step": 4, "w": torch.ones(1000)}, path)
    before = path.read_bytes()

    def dies_half_way(obj, file):
        file.write(b"\x00" * 100)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"global_step": 8, "w": torch.zeros(1000)}, path)
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["global_step"] == 4


def test_lightnings_own_writer_stages_in_tmpdir_and_moves_across_filesystems(tmp_path, tmpdir_on_another_filesystem,
                                                                            monkeypatch):
    """Why AtomicCheckpointIO exists: the default writer copies from $TMPDIR (not atomic across filesystems)."""
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    moved = []
    real_move = shutil.move
    monkeypatch.setattr(shutil, "move", lambda src, dst, *a: (moved.append(Path(src)), real_move(src, dst, *a))[1])
    TorchCheckpointIO().save_checkpoint({"global_step": 7}, tmp_path / "last.ckpt")
    assert len(moved) == 1 and moved[0].parent == tmpdir_on_another_filesystem
