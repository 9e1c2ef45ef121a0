"""Train on a simulated corpus through the command line, then fine-tune on a scan (``--init-from``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from ptycho_torch.checkpoint import load_generator
from ptychopinn.cli import main
from tests.training.conftest import N

pytestmark = pytest.mark.slow


def test_corpus_pretraining_then_self_supervised_fine_tuning(scan_files, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    assert main(["corpus", "--out", str(corpus), "--n", str(N), "--scans", "4", "--positions", "16",
                 "--scans-per-shard", "2", "--doses", "1e4", "1e6", "--seed", "5"]) == 0
    common = ["--n", str(N), "--n-filters-scale", "1", "--generator", "full", "--batch-size", "8",
              "--accelerator", "cpu", "--no-progress-bar", "--logger", "none", "--seed", "0"]
    pre = tmp_path / "pre"
    assert main(["train", "--train-corpus", str(corpus), "--output-dir", str(pre), "--epochs", "2", *common]) == 0
    summary = json.loads((pre / "summary.json").read_text())
    assert summary["global_step"] == 2 * 4  # shard 1 trains (32 patterns = 4 batches), shard 2 validates
    assert summary["best_val_loss"] is not None and math.isfinite(summary["final_metrics"]["val_loss"])
    generator, record, probe = load_generator(pre / "checkpoints" / "last.ckpt")
    assert record.model.generator == "full" and str(record.training.train_corpus) == str(corpus)

    train_file, test_file = scan_files
    tuned = tmp_path / "tuned"
    args = ["train", "--train-data", str(test_file), "--output-dir", str(tuned), "--epochs", "1",
            "--init-from", str(pre / "checkpoints" / "last.ckpt"), *common]
    assert main(args) == 0
    after, _, _ = load_generator(tuned / "checkpoints" / "last.ckpt")
    moved = [not torch.equal(a, b)
             for a, b in zip(generator.state_dict().values(), after.state_dict().values(), strict=True)]
    assert any(moved)  # trained further from the pretrained weights ...
    assert json.loads((tuned / "summary.json").read_text())["global_step"] == 2  # ... a fresh run: 15 groups / 8
    capsys.readouterr()
    assert main([*args, "--resume", str(tuned / "checkpoints" / "last.ckpt")]) == 2
    assert "`resume` and `init_from` must not both be given" in capsys.readouterr().err
