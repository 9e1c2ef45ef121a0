"""Two DDP processes on the CPU (gloo): each rank trains on its own share, one checkpoint set."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
PROJECT_ROOT = Path(__file__).resolve().parents[2]

# Lightning's DDP launcher re-runs this script once per extra rank, so it must be a real file.
SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path

    import lightning as L

    from ptycho_torch.config import ModelConfig, PyTorchExecutionConfig, TrainingConfig
    from ptycho_torch.data import RawData
    from training.trainer import train

    train_file, test_file, run = map(Path, sys.argv[1:4])


    class RecordIndices(L.Callback):
        def __init__(self):
            self.seen = []

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            self.seen += batch["index"].tolist()

        def on_train_end(self, trainer, module):
            out = run / f"rank{trainer.global_rank}.json"
            out.write_text(json.dumps({"seen": self.seen, "world_size": trainer.world_size,
                                       "backend": str(trainer.strategy.process_group_backend)}))


    training = TrainingConfig(model=ModelConfig(N=32, n_filters_scale=1), batch_size=4, nepochs=1,
                              nphotons=1e6, output_dir=run)
    execution = PyTorchExecutionConfig(accelerator="cpu", devices=2, strategy="ddp", enable_progress_bar=False,
                                       seed=0)
    train(training, execution, train_data=RawData.from_file(train_file), test_data=RawData.from_file(test_file),
          callbacks=[RecordIndices()])
    """
)


def test_ddp_two_cpu_processes_split_the_data_and_checkpoint_once(scan_files, tmp_path):
    script = tmp_path / "ddp_train.py"
    script.write_text(SCRIPT)
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(script), str(scan_files[0]), str(scan_files[1]), str(run)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((run / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert all(r["world_size"] == 2 and r["backend"] == "gloo" for r in ranks)
    seen0, seen1 = set(ranks[0]["seen"]), set(ranks[1]["seen"])
    assert len(seen0) == len(seen1) == 16  # 32 groups split evenly over two ranks
    assert not seen0 & seen1 and seen0 | seen1 == set(range(32))
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.ckpt", "last.ckpt"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["train_samples"] == 32 and summary["global_step"] == 4
