"""The budgeted step loop that every trainer runs (``train`` and the joint fine-tuning).

One stop rule: a loop ends at its step count, or before a step would overrun its
deadline (the last step times measured, plus a reserve for what follows the loop),
but never before ``min_steps``. One progress bar with a total and an ETA: seconds of
the budget when there is a budget, else steps. Budgets count from the command's start
(:func:`process_start`) and carry over a resume (:class:`Budget`).
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

EMA = 0.1  # weight of the newest step in the step-time estimate


def process_start() -> float:
    """The ``time.perf_counter()`` value at which this process started (Linux; elsewhere,
    now): the start of a command, its imports included."""
    now = time.perf_counter()
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        age = float(Path("/proc/uptime").read_text().split()[0]) - int(fields[19]) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return now
    return now - min(max(age, 0.0), 3600.0)


def command_start(invoked: float | None, young: float = 30.0) -> float | None:
    """When a command started, for its time budget: the process's start (its imports
    included) when the process was started for it, i.e. at most ``young`` seconds before
    ``invoked`` (when the CLI group ran, ``time.perf_counter()`` scale); else ``invoked``
    (a command run inside a longer-lived process: a test, a notebook). None when not run
    through the CLI group (e.g. a recipe step): the budget then counts from the call."""
    if invoked is None:
        return None
    start = process_start()
    return start if invoked - start <= young else invoked


@dataclass
class Budget:
    """A time budget of ``seconds`` (None: none) counted from ``start`` (a
    ``time.perf_counter()`` value), of which ``spent_before`` seconds went to the earlier
    parts of a resumed run."""

    seconds: float | None
    start: float
    spent_before: float = 0.0

    @property
    def deadline(self) -> float | None:
        """When the budget runs out (``time.perf_counter()`` scale); None without budget."""
        if self.seconds is None:
            return None
        return self.start + max(self.seconds - self.spent_before, 0.0)

    def left(self, now: float | None = None) -> float | None:
        """Seconds left (may be negative); None without budget."""
        d = self.deadline
        return None if d is None else d - (time.perf_counter() if now is None else now)

    def spent(self, now: float | None = None) -> float:
        """Seconds of the budget used, the earlier parts of a resumed run included."""
        return self.spent_before + (time.perf_counter() if now is None else now) - self.start

    def point(self, share: float) -> float | None:
        """The time by which ``share`` of what is left of the budget at ``start`` is used."""
        d = self.deadline
        return None if d is None else self.start + share * (d - self.start)


class Every:
    """Something due every ``steps`` steps or every ``seconds`` seconds since it was last
    due (either or both given: due at whichever comes first)."""

    def __init__(self, steps: int | None = None, seconds: float | None = None) -> None:
        self.steps, self.seconds = steps, seconds
        self.last = time.perf_counter()

    def due(self, step: int, now: float | None = None) -> bool:
        """Whether it is due after ``step`` (counted from 1); marks it done when it is."""
        now = time.perf_counter() if now is None else now
        hit = (self.steps is not None and step % self.steps == 0) or \
            (self.seconds is not None and now - self.last >= self.seconds)
        if hit:
            self.last = now
        return hit


class StepLoop:
    """Iterate over step numbers until ``total`` steps, or until one more step would end
    past ``deadline`` (a ``time.perf_counter()`` value) once ``reserve`` seconds are kept
    for what follows; at least ``min_steps`` steps (counted from 0, resumed steps
    included) in any case.

    ``agree(flag)``: the processes' joint decision (any of them wants to stop) under
    ``torchrun``. After the loop, ``stopped`` says why it ended ("steps" or "time
    budget") and ``step`` is the number of steps done. ``note(**postfix)`` shows values
    on the bar (at most twice a second). The bar counts seconds of the budget when there
    is a deadline and either no ``total`` or ``by_time`` (``total`` is only a cap that
    the budget is expected to cut), else steps.
    """

    def __init__(self, total: int | None, deadline: float | None = None, step: int = 0, min_steps: int = 0,
                 reserve: float = 1.0, desc: str = "train", progress: bool = True,
                 agree: Callable[[bool], bool] | None = None, by_time: bool = False) -> None:
        self.total, self.deadline, self.step = total, deadline, step
        self.min_steps, self.reserve = min_steps, reserve
        self.agree = agree or (lambda flag: flag)
        self.step_time = 0.0
        self.stopped = "steps"
        self.began = time.perf_counter()
        by_time = deadline is not None and (total is None or by_time)
        self.bar = tqdm(total=round(max(deadline - self.began, 0.0), 1) if by_time else total,
                        initial=0 if by_time else step, desc=desc, unit="s" if by_time else "step",
                        disable=not progress, bar_format=("{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}"
                                                          "{postfix}]") if by_time else None)
        self.by_time = by_time
        self._shown = self.began
        self._postfix: dict[str, str] = {}

    def over(self, now: float) -> bool:
        """Whether one more step would overrun the deadline (ignoring ``min_steps``)."""
        return self.deadline is not None and now + 2 * self.step_time + self.reserve > self.deadline

    def __iter__(self) -> Iterator[int]:
        try:
            while self.total is None or self.step < self.total:
                t0 = time.perf_counter()
                if self.agree(self.step >= self.min_steps and self.over(t0)):
                    self.stopped = "time budget"
                    break
                yield self.step
                self.step += 1
                took = time.perf_counter() - t0
                self.step_time = (1 - EMA) * self.step_time + EMA * took if self.step_time else took
                self._tick(t0 + took)
        finally:
            self.close()

    def note(self, **postfix: object) -> None:
        """Values to show on the bar (formatted lazily)."""
        self._postfix.update({k: str(v) for k, v in postfix.items()})

    def _tick(self, now: float) -> None:
        if self.bar.disable:
            return
        if not self.by_time:
            self.bar.update(1)
        if now - self._shown >= 0.5:
            self._shown = now
            if self.by_time:
                self.bar.n = round(min(now - self.began, self.bar.total), 1)
            self.bar.set_postfix({**({"step": self.step} if self.by_time else {}), **self._postfix}, refresh=True)

    def close(self) -> None:
        """Close the bar (done by the loop itself when it ends)."""
        if not self.bar.disable and self.by_time:
            self.bar.n = round(min(time.perf_counter() - self.began, self.bar.total), 1)
            self.bar.set_postfix({"step": self.step, **self._postfix}, refresh=False)
        self.bar.close()
