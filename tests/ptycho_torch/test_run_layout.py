"""The run directory's files, and summary.json as a typed record with the keys its readers know."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ptycho_torch.errors import ModelArchiveError
from ptycho_torch.run_layout import RunLayout, RunStatus, RunSummary

COUNTS = {"epochs": 3, "global_step": 12, "steps_this_run": 4, "train_samples": 32, "wall_s": 1.5,
          "samples_per_s": 21.33, "world_size": 1, "accelerator": "CPUAccelerator", "best_val_loss": -2.5,
          "best_checkpoint": "RUN/checkpoints/best.ckpt", "last_checkpoint": "RUN/checkpoints/last.ckpt",
          "final_metrics": {"val_loss": -2.25}}


@pytest.mark.parametrize(("status", "details", "head"), [
    (RunStatus.COMPLETED, {}, {"status": "completed", "init_from": None}),
    (RunStatus.EARLY_STOPPED, {"init_from": "pre/best.ckpt"}, {"status": "early_stopped", "init_from": "pre/best.ckpt"}),
    (RunStatus.INTERRUPTED, {"signal": "SIGTERM"}, {"status": "interrupted", "signal": "SIGTERM"}),
    (RunStatus.FAILED, {"error": "RuntimeError: boom"}, {"status": "failed", "error": "RuntimeError: boom"}),
])
def test_summary_json_has_the_keys_of_each_ending_and_reads_back(tmp_path: Path, status: RunStatus, details: dict,
                                                                 head: dict) -> None:
    summary = RunSummary(status=status, **details, **COUNTS)
    assert summary.to_json() == {**head, **COUNTS} and list(summary.to_json()) == [*head, *COUNTS]
    assert summary.best_checkpoint == Path("RUN/checkpoints/best.ckpt")  # typed: a path, not a string
    layout = RunLayout(tmp_path)
    assert layout.read_summary() is None  # a run still going (or killed before its summary)
    summary.write(layout.summary)
    assert json.loads(layout.summary.read_text()) == {**head, **COUNTS}
    assert layout.read_summary() == summary == RunSummary.from_json(summary.to_json())


def test_the_run_of_a_checkpoint_and_its_summary() -> None:
    layout = RunLayout.of_checkpoint("runs/a/checkpoints/best.ckpt")
    assert layout == RunLayout(Path("runs/a")) and layout.summary == Path("runs/a/summary.json")
    assert RunLayout.of_checkpoint("elsewhere/best.ckpt") is None


@pytest.mark.parametrize(("text", "message"), [
    ("{not json", r"summary.json must be a readable summary.json written by `ptychopinn train`"),
    ("[1, 2]", r"must hold a JSON object, got list"),
    ('{"status": "completed"}', r"must hold the keys of summary.json, got \['status'\]"),
    (json.dumps({"status": "paused", **COUNTS}), r"'paused' is not a valid RunStatus"),
])
def test_a_file_that_is_not_a_summary_is_named_in_one_line(tmp_path: Path, text: str, message: str) -> None:
    layout = RunLayout(tmp_path)
    layout.summary.write_text(text)
    with pytest.raises(ModelArchiveError, match=message) as error:
        layout.read_summary()
    assert "\n" not in str(error.value)
