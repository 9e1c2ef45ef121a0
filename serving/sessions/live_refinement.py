"""A live session's refinement: rounds over the frames so far, each warm-started from the last one.

A round refines the whole scan measured so far the way a whole-scan request would
(:func:`~ptycho_torch.refinement.refine_stitched`: a :class:`~ptycho_torch.refinement.ScanModel` over
the frames in scan-index order, on the network canvas's grid, from the plan's start), except that
it starts from the last round's object wherever that round's probe reached (illumination above
:data:`REACHED` of its largest), with the fresh start elsewhere multiplied by the complex gain that
best maps it onto the last object there (so the network's patches, or the flat object, join the
refined object at its scale and global phase). A live round runs :data:`ROUND_ITERATIONS` iterations
of the plan's update rule on the object alone, with the model's probe and the given positions; the
final round runs the plan's own settings (iteration count or ``"auto"``, time limit, the probe and
the positions when asked) from the warm start. Refining the probe and positions in the live rounds
too ended further from the whole-scan refinement (SSIM 0.990 / 0.991 against it, 0.985 / 0.993
against the truth, where the whole scan reaches 0.990 / 0.999) than refining them in the final round
only (0.999 / 0.999 against it, 0.992 / 1.000 against the truth): a probe fitted to the first few
frames takes up object structure the later frames must undo (256 jittered frames of 32x32 in 8
chunks, ``"auto"`` from flat, ``tests/serving/test_session_refinement.py``'s scan). numpy only
(through the refinement's backend); no threads, no locks: the
:class:`~serving.sessions.refiner.Refiner` runs the rounds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ptycho_torch.choices import RefineStart, StopReason
from ptycho_torch.pipeline import refinement_summary
from ptycho_torch.refinement import (
    STARTS,
    Refinement,
    RefineSettings,
    ScanModel,
    StitchedRefinement,
    canvas_model,
    refine,
)
from ptycho_torch.stitching import StitchResult
from serving.sessions.kept_frames import ScanFrames
from serving.sessions.stream_canvas import RefinedLayer

__all__ = ["REACHED", "ROUND_ITERATIONS", "LiveRefinement", "Round", "RoundInput", "RoundResult", "live_settings"]

ROUND_ITERATIONS = 4
"""Iterations of a live round."""
REACHED = 0.01
"""A pixel counts as refined by a round where its illumination is above this fraction of the largest."""


def live_settings(settings: RefineSettings) -> RefineSettings:
    """A live round's settings: the plan's update rule on the object alone (the model's probe, the given
    positions), :data:`ROUND_ITERATIONS` iterations, no time limit."""
    return dataclasses.replace(settings, iterations=ROUND_ITERATIONS, time_limit_s=None, refine_probe=False,
                               refine_positions=False, probe_modes=None)


@dataclass(frozen=True)
class RoundInput:
    """What a round runs on, taken under the session's lock: the frames kept so far, and the network's
    canvas of exactly those frames (the grid the round runs on, and the network's start)."""

    frames: ScanFrames
    canvas: StitchResult


@dataclass(frozen=True)
class RoundResult:
    """The state a round ended in, in the session's terms."""

    step: StitchedRefinement
    """The refined object cut to the round's canvas, the solver's state and its working memory."""
    indices: npt.NDArray[np.int64]
    """``(S,)`` scan indices of the frames refined, ascending (the rows of the data fit and positions)."""
    given_positions: npt.NDArray[np.float64]
    """``(S, 2)`` the positions the frames were sent with, rows as :attr:`indices`."""
    origin: tuple[int, int]
    """``(x0, y0)``: the canvas ``(col, row)`` of object position ``(0, 0)`` on the canvas the round ran on."""
    covered: npt.NDArray[np.bool_]
    """``(H, W)``: where a patch covered that canvas (coverage > 0)."""
    settings: RefineSettings
    start: RefineStart
    final: bool
    """The final round (the plan's settings over the whole scan) rather than a live one."""
    rounds: int
    """Rounds run so far, this one included."""

    @property
    def state(self) -> Refinement:
        return self.step.state

    def layer(self) -> RefinedLayer:
        """The object as the canvas shows it: where the round's canvas was covered (all of it when final)."""
        (x0, y0), (H, W) = self.origin, self.covered.shape
        return RefinedLayer((-x0, -y0, W, H), self.step.canvas, np.ones((H, W), bool) if self.final else self.covered)

    @property
    def completed(self) -> bool:
        """The final round's last state: the refinement asked for ran to its end."""
        return self.final and self.state.stop_reason is not None

    def summary(self, asked: RefineSettings, stop_reason: StopReason | None = None,
                stopped: str | None = None) -> dict[str, Any]:
        """:attr:`~ptycho_torch.pipeline.Reconstruction.refinement` of this state (as a whole-scan request
        reports it: ``iterations``, ``refine_probe`` and ``refine_positions`` are this state's, so say
        whether its probe and positions are refined ones), with ``final``, ``rounds``, ``frames`` (how many
        it refined) and ``asked``: the refinement the session was asked for (``asked``: the plan's
        settings; ``iterations``, ``refine_probe``, ``refine_positions``). Only a :attr:`completed` state
        keeps the solver's ``stop_reason`` and ``stopped``; any other state (a live round's, the final
        round's before its end) has the caller's: None while the refinement goes on, else why it ended
        early (with :meth:`outcome`), and then a warning per asked-for probe or positions not refined."""
        summary = {**refinement_summary(self.settings, self.start, self.step, self.given_positions),
                   "final": self.final, "rounds": self.rounds, "frames": len(self.indices),
                   "asked": {"iterations": asked.iterations, "refine_probe": asked.refine_probe,
                             "refine_positions": asked.refine_positions}}
        if self.completed:
            return summary
        summary["stop_reason"], summary["stopped"] = None if stop_reason is None else str(stop_reason), stopped
        if stopped is not None:
            summary["warnings"] += [f"`refine_{what}` had no effect: the refinement ended before its final round "
                                    f"refined the {what}" for what in ("probe", "positions")
                                    if getattr(asked, f"refine_{what}") and not getattr(self.settings, f"refine_{what}")]
        return summary

    def outcome(self) -> str:
        """What this state is, in words (for a refinement that ended before its final round's end)."""
        if self.final:
            return (f"the final round stopped after {self.state.iteration} iterations over {len(self.indices)} "
                    "frames: the object (and the probe and positions asked for) are its state then")
        return (f"the final round did not run: the object is the last live round's (object only, "
                f"{self.state.iteration} iterations over {len(self.indices)} frames)")

    def data_fit(self, probe_source: str) -> dict[str, Any] | None:
        """:attr:`~ptycho_torch.pipeline.Reconstruction.data_fit` of this state (None between a round's first
        and last iteration): per-pattern figures in scan-index order, ``outliers`` as scan indices."""
        fit = self.state.fit
        if fit is None:
            return None
        figures = fit.to_json()
        return {**figures, "outliers": self.indices[np.asarray(figures["outliers"], np.int64)].tolist(),
                "probe": probe_source, "iterations": self.state.history}

    def probe(self) -> npt.NDArray[np.complex64] | None:
        """``(P, N, N)`` the refined probe modes (``refine_probe``), else None."""
        return np.array(self.state.probe, np.complex64) if self.settings.refine_probe else None

    def positions(self) -> npt.NDArray[np.float64] | None:
        """``(S, 2)`` the corrected positions, rows as :attr:`indices` (``refine_positions``), else None."""
        return np.array(self.state.positions, np.float64) if self.settings.refine_positions else None


@dataclass(frozen=True)
class _Warm:
    """What a round leaves for the next: its object on its grown grid (grid ``(col, row)`` of object
    position ``(0, 0)`` at ``origin``) and where its probe reached."""

    object: npt.NDArray[np.complex64]
    origin: tuple[float, float]
    reached: npt.NDArray[np.bool_]

    def paste(self, start: npt.NDArray[np.complex64], origin: tuple[float, float]) -> None:
        """Put this object into ``start`` (a fresh start on a grid with ``origin``) where it was reached,
        after multiplying ``start`` by the complex gain that maps it best onto this object there."""
        dx, dy = round(origin[0] - self.origin[0]), round(origin[1] - self.origin[1])
        (H, W), (h, w) = start.shape, self.object.shape
        r0, r1, c0, c1 = max(0, dy), min(H, dy + h), max(0, dx), min(W, dx + w)
        if r0 >= r1 or c0 >= c1:
            return
        reached = self.reached[r0 - dy:r1 - dy, c0 - dx:c1 - dx]
        warm = self.object[r0 - dy:r1 - dy, c0 - dx:c1 - dx][reached]
        fresh = start[r0:r1, c0:c1][reached]
        power = float(np.vdot(fresh, fresh).real)
        if power > 0:
            start *= np.complex64(np.vdot(fresh, warm) / power)
        start[r0:r1, c0:c1][reached] = warm


class Round:
    """One round, ready to run: :meth:`steps` yields the solver's states; stop (close) it between them
    at any time, and :meth:`result` gives the last state taken."""

    def __init__(self, model: ScanModel, start: npt.NDArray[np.complex64], frames: ScanFrames, given: RoundInput,
                 settings: RefineSettings, start_kind: RefineStart, *, final: bool, number: int) -> None:
        self.model, self.settings, self.final, self.number = model, settings, final, number
        self.indices, self.given_positions = frames.indices, frames.positions
        """``(S,)`` ascending scan indices of the frames (the model's rows) and their given positions ``(S, 2)``."""
        self.canvas, self.start_kind = given.canvas, start_kind
        self._start = start
        self.last: Refinement | None = None
        """The last state :meth:`steps` yielded (None before the first)."""

    def steps(self) -> Generator[Refinement, None, None]:
        """The state after the start's fit, then after every iteration (see :func:`~ptycho_torch.refinement.refine`)."""
        for state in refine(self.model, self._start, self.settings):
            self.last = state
            yield state

    def result(self) -> RoundResult:
        """The last state taken from :meth:`steps`, in the session's terms (its object cut and copied)."""
        assert self.last is not None, "take a state from steps() first"
        step = StitchedRefinement(self.model.crop(self.last.object).copy(), self.last, self.model.peak_bytes)
        x0, y0 = self.canvas.origin
        return RoundResult(step, self.indices, self.given_positions, (int(x0), int(y0)), self.canvas.coverage > 0,
                           self.settings, self.start_kind, self.final, self.number)


class LiveRefinement:
    """The rounds of one session refining with ``probe`` ``(N, N)`` or ``(P, N, N)`` under ``settings`` from
    ``start``; each round is warm-started from the last one :meth:`keep` was given."""

    def __init__(self, probe: npt.ArrayLike, settings: RefineSettings, start: RefineStart) -> None:
        self.settings, self.start = settings, start
        self.live_settings = live_settings(settings)
        self._probe = np.asarray(probe)
        self._warm: _Warm | None = None
        self.rounds = 0
        """Rounds prepared so far."""

    def prepare(self, given: RoundInput, *, final: bool) -> Round:
        """A round over ``given`` (live, or the final one with the plan's settings), warm-started."""
        frames, warm = given.frames.by_index(), self._warm
        settings = self.settings if final else self.live_settings
        canvas = given.canvas
        model = canvas_model(frames.amplitudes, frames.positions, self._probe, canvas.canvas.shape, canvas.origin,
                             settings)
        start = np.asarray(model.be.to_numpy(STARTS[self.start](model, canvas.canvas, canvas.coverage)), np.complex64)
        if warm is not None:
            warm.paste(start, model.origin)
        self.rounds += 1
        return Round(model, start, frames, given, settings, self.start, final=final, number=self.rounds)

    def keep(self, done: Round) -> None:
        """Make the last state ``done`` took the start of the next round."""
        state, model = done.last, done.model
        if state is None:
            return
        illumination = np.asarray(model.be.to_numpy(model.illumination()))
        self._warm = _Warm(np.asarray(state.object, np.complex64), model.origin,
                           illumination > REACHED * float(illumination.max()))
