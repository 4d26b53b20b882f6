"""The configurations a compute-budget sweep chooses from (:mod:`proxytasks.budget`).

The grid's axes (backbone: approximation; pair fraction: estimation; steps and schedule:
optimisation; strategy), one configuration (:class:`Candidate`), the sweep's settings
(:class:`SweepSettings`), the grid in a fixed order (:func:`candidates`), its seeded sample
within one budget (:func:`sample`) and a configuration row in words (:func:`describe`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from .defaults import DEFAULT_BACKBONE

BACKBONES = ("mobilenetv2_100", DEFAULT_BACKBONE, "dlib_resnet29")
FRACTIONS = (0.25, 0.5, 1.0)
STEPS = (50, 200, 800, 3200)
SCHEDULES = ("constant", "cosine")
JOINT_STEPS = 100  # joint fine-tuning steps of a "global" configuration, after its proxy training


@dataclass(frozen=True)
class Candidate:
    """One configuration: strategy, backbone (approximation), pair fraction (estimation),
    steps and schedule (optimisation); ``joint_steps`` for the global strategy."""

    strategy: str
    backbone: str
    fraction: float = 0.0
    steps: int = 0
    lr_schedule: str = "none"
    joint_steps: int = 0

    @property
    def base(self) -> "Candidate":
        """The proxy training (sequential configuration) a global one starts from."""
        return Candidate("sequential", self.backbone, self.fraction, self.steps, self.lr_schedule)

    def label(self) -> str:
        """The configuration in words, e.g. ``sequential mobilenetv2_100 0.5 of pairs, 200 steps cosine``."""
        if self.strategy == "independent":
            return f"independent {self.backbone}"
        text = f"{self.strategy} {self.backbone} {self.fraction:g} of pairs, {self.steps} steps {self.lr_schedule}"
        return text + (f" + {self.joint_steps} joint" if self.joint_steps else "")


@dataclass
class SweepSettings:
    """Options of :func:`budget_sweep`; field names equal the ``proxytasks budget`` options."""

    budgets: tuple[float, ...] = (60.0, 180.0, 600.0)
    backbones: tuple[str, ...] | None = None  # None: those of BACKBONES with weights here
    fractions: tuple[float, ...] = FRACTIONS
    steps: tuple[int, ...] = STEPS
    schedules: tuple[str, ...] = SCHEDULES
    strategies: tuple[str, ...] = ("independent", "sequential", "global")
    joint_steps: int = JOINT_STEPS
    max_configs: int = 8
    shots: int = 1
    repeats: int = 3
    test_share: float = 0.3
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    batch_size: int = 64


def candidates(s: SweepSettings, backbones: Sequence[str]) -> list[Candidate]:
    """Every configuration of the grid, in a fixed order."""
    out = [Candidate("independent", b) for b in backbones if "independent" in s.strategies]
    for b in backbones:
        for f in s.fractions:
            for st in s.steps:
                for sched in s.schedules:
                    if "sequential" in s.strategies:
                        out.append(Candidate("sequential", b, f, st, sched))
                    if "global" in s.strategies and sched == s.schedules[0]:
                        out.append(Candidate("global", b, f, st, sched, s.joint_steps))
    return out


def sample(pool: list[tuple[Candidate, float]], k: int, budget: float, seed: int) -> list[Candidate]:
    """``k`` of ``pool`` ((candidate, predicted seconds)) at random, weights by predicted cost;
    every independent one kept on top."""
    cheap = [c for c, _ in pool if c.strategy == "independent"]
    rest = [(c, p) for c, p in pool if c.strategy != "independent"]
    if len(rest) > k:
        w = np.array([max(p, 1e-3) / budget for _, p in rest])
        pick = np.random.default_rng([seed, int(budget)]).choice(len(rest), k, replace=False, p=w / w.sum())
        rest = [rest[i] for i in sorted(pick)]
    return cheap + [c for c, _ in rest]



def key(row: dict[str, Any]) -> tuple:
    """What identifies a configuration row of budget.json (its grid coordinates)."""
    return (row["strategy"], row["backbone"], row["fraction"], row["steps"], row["lr_schedule"], row["joint_steps"])



def describe(row: dict[str, Any] | None) -> str:
    """A configuration row in words."""
    if row is None:
        return "none"
    return Candidate(row["strategy"], row["backbone"], row["fraction"], row["steps"], row["lr_schedule"],
                     row["joint_steps"]).label()
