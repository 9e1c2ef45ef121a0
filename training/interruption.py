"""Stop training cleanly on a signal: SIGTERM, SIGUSR1 (SLURM pre-emption notice) or Ctrl+C.

Lightning already turns SIGTERM into a stop between two batches (``SIGTERMException``), forwards it
to DDP worker processes and broadcasts it so every rank stops at the same step. :class:`SignalStop`
routes SIGUSR1 and the first SIGINT into that same handler (a second Ctrl+C interrupts at once) and
remembers which signal came first, so the run can exit ``128 + signal`` after
:class:`~training.checkpointing.LastCheckpoint` has written ``last.ckpt``.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any

import lightning as L

#: signals that stop training between two batches
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)


class SignalStop(L.Callback):
    """Send SIGTERM, SIGUSR1 and SIGINT to Lightning's SIGTERM stop and record the first one."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._lightning_handler: Any = None

    def on_sanity_check_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._install()  # when there was no sanity check

    def _install(self) -> None:
        # Lightning registers its SIGTERM handler just before the sanity check and training, and
        # restores every handler (these included) when the run ends.
        if threading.current_thread() is not threading.main_thread():
            return
        current = signal.getsignal(signal.SIGTERM)
        if current == self._handle:
            return
        self._lightning_handler = current
        for signum in STOP_SIGNALS:
            signal.signal(signum, self._handle)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        if signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl+C stops at once
        if callable(self._lightning_handler):
            self._lightning_handler(signal.SIGTERM, frame)

    @property
    def stop_signal(self) -> signal.Signals:
        """The signal that stopped the run (SIGTERM when none was recorded here)."""
        return signal.Signals(self.signum or signal.SIGTERM)
