"""Compute-budget sweep: which model, how much data and how much optimisation for a time budget.

Large-scale learning is limited by compute time, not by the number of examples (Bottou and
Bousquet): the final error splits into approximation (how rich the model family is: here the
backbone), estimation (how many examples: the rule pairs used) and optimisation (how far
training goes: steps and learning-rate schedule). Inside a fixed budget, lowering one raises
another, and the best mix changes with the budget. :func:`budget_sweep` measures that
trade-off on the user's own faces and device.

How a sweep runs:

1. **Split.** Held-out test faces (time chunks of each video, a share of photos) on which
   every configuration is evaluated; training uses the rest. A pair fraction ``f`` keeps the
   training faces of the first scenes (connected components of the must- and cannot-links,
   in seeded random order) until ``f`` of them are in, so a kept face keeps its constraints;
   ``pairs`` is the number of rule pairs among them.
2. **Probe.** Per backbone, on this device: the trunk's start-up and seconds per face (two
   passes over test faces, of one and two whole batches, after an untimed warm-up; the
   test faces are needed by every configuration anyway), the same for the trunk before its
   last stage when the ``global`` strategy is swept, ``train``'s fixed cost and seconds
   per step (per trunk width: one 300-step run on stand-in features, the line through its
   checkpoint times), and the joint fine-tuning's (two short runs).
3. **Candidates.** Strategy (:data:`proxytasks.finetune.FINETUNE_STRATEGIES`) x backbone x pair
   fraction x steps x schedule. A configuration's predicted cost is what it would take
   alone: trunk passes over its faces, training, the joint fine-tuning. Those predicted over
   a budget are skipped for it; of the rest, up to ``max_configs`` are sampled (seeded,
   favouring configurations that use more of the budget; the cheap ``independent`` ones
   always). The prediction is refined by every measurement: a trunk pass costs the
   least-squares line (start-up + faces x seconds per face) through all the passes of its
   backbone so far, and training and fine-tuning cost their probed time times the median
   measured / probed ratio of their last three runs, so a machine that slows down (other
   jobs) or speeds up is followed. Each configuration's prediction is recorded
   just before it runs, and one predicted over its budget by then is skipped.
4. **Run.** Budgets in increasing order; each has its own seconds of wall time to spend,
   plus what the earlier ones left (the probe is paid from the largest). Trunk features are
   computed once per backbone and face and shared: in the sweep's clock a configuration pays
   only for faces not computed yet, and one whose remaining cost does not fit what is left is
   skipped. ``train`` (:func:`proxytasks.train.train`, with its budget and its selection of
   the best checkpoint by a label-free validation score) runs on the precomputed features with
   the rest of the budget as its time budget.
5. **Record.** For each configuration run: predicted and actual seconds (actual: its face
   passes at the final line through all its backbone's passes in this sweep, since trunk
   outputs are shared, plus its measured training and fine-tuning time), and the error on the test faces: ``1 - naming
   accuracy`` at ``shots`` names per person (mean of ``repeats`` seeded draws) when faces
   carry ``identity``, each face named by the naming head alone (carrying names along tracks
   would hide the differences between embeddings), else ``1 - ROC-AUC`` of held-out must- vs
   cannot-link pairs. Per budget: the best configuration (lowest error among every
   configuration run whose actual cost fits the budget), the best of each strategy, and a
   conclusion saying whether the best configuration changes between the smallest and the
   largest budget, or why not.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from tqdm.auto import tqdm

from .budget_grid import (BACKBONES, FRACTIONS, JOINT_STEPS, SCHEDULES, STEPS, Candidate, SweepSettings,
                          candidates, describe, sample)
from .budget_report import conclusion, finish_rows, plots, table, write_outputs
from .budget_run import VIEWS, Cost, Sweep, first_scenes, scenes_order
from .errors import ProxytasksError
from .manifest import Manifest
from .pairs import PairSet

__all__ = ["BACKBONES", "FRACTIONS", "JOINT_STEPS", "SCHEDULES", "STEPS", "VIEWS", "Candidate", "Cost",
           "SweepSettings", "budget_sweep", "candidates", "conclusion", "describe", "first_scenes", "plots",
           "scenes_order", "table", "write_outputs"]

logger = logging.getLogger(__name__)


def _row(c: Candidate, res: dict[str, Any] | None, predicted: float, reason: str | None = None) -> dict[str, Any]:
    """A configuration as budget.json lists it (``actual_s`` is filled in at the end)."""
    row = {"strategy": c.strategy, "backbone": c.backbone, "pairs": None, "fraction": c.fraction,
           "steps": c.steps, "lr_schedule": c.lr_schedule, "joint_steps": c.joint_steps,
           "predicted_s": round(predicted, 3), "actual_s": None, "error": None,
           "status": "run" if res is not None else "skipped"}
    if reason:
        row["reason"] = reason
    if res is not None:
        row.update(pairs=res["pairs"], faces=res["faces"], steps_run=res["steps"], stopped=res["stopped"],
                   error=round(res["error"], 5), train_s=round(res["train_s"], 3))
        if "joint_s" in res:
            row["joint_s"] = round(res["joint_s"], 3)
    return row


def budget_sweep(manifest: Manifest, pairs: PairSet, out: str | os.PathLike, settings: SweepSettings | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Run the sweep (see the module docstring); writes ``out/budget.json``, ``out/budget.md``
    and the plots ``out/budget_*.svg``; returns the contents of budget.json."""
    from .models import WeightsNotFoundError, resolve_weights
    from .finetune import FINETUNE_STRATEGIES

    s = settings or SweepSettings()
    start = time.perf_counter()
    _check_settings(s, FINETUNE_STRATEGIES)
    if pairs.n_faces != len(manifest):
        raise ProxytasksError(f"the pairs index {pairs.n_faces} faces but the manifest holds {len(manifest)}")
    backbones = list(s.backbones) if s.backbones else []
    if not backbones:
        for b in BACKBONES:
            try:
                resolve_weights(b)
                backbones.append(b)
            except WeightsNotFoundError as e:
                logger.warning("budget sweep without %s: %s", b, e)
        if not backbones:
            raise ProxytasksError(f"no weights found for any of {', '.join(BACKBONES)}; install one (see above)")
    out = Path(out)
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        sw = Sweep(manifest, pairs, work, s)
        if "global" in s.strategies and not sw.named:
            logger.warning("budget sweep without the global strategy: the held-out faces carry no identities "
                           "to fine-tune on")
            s = replace(s, strategies=tuple(x for x in s.strategies if x != "global"))
            sw.s = s
        budgets = sorted(set(float(b) for b in s.budgets))
        # One bar for the whole sweep, in seconds: its total is the sum of the budgets (the
        # probe included) until the time the sweep may still take says otherwise (``ahead``:
        # what the budget being run and the later ones have left), and its ETA that time.
        bar = tqdm(total=sum(budgets), desc="budget sweep", unit="s", disable=not progress,
                   bar_format="{l_bar}{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}{postfix}]")

        def tick(remaining: float | None = None, **postfix: Any) -> None:
            bar.n = time.perf_counter() - start
            bar.total = bar.n + max(remaining, 0.0) if remaining is not None else max(bar.total, bar.n)
            bar.set_postfix(postfix, refresh=True)

        for k, b in enumerate(backbones, 1):
            tick(probe=f"{b} ({k}/{len(backbones)})")
            sw.probe(b, s.strategies)
        grid = candidates(s, backbones)
        rows: dict[str, Any] = {}
        probe_s, left = time.perf_counter() - start, 0.0

        def ahead(budget: float, clock: float) -> float:
            """Seconds the sweep may still take: what this budget has left, plus the later ones."""
            later = sum(b for b in budgets if b > budget) - (probe_s if budget < budgets[-1] else 0.0)
            return max(left - (time.perf_counter() - clock), 0.0) + max(later, 0.0)

        for budget in budgets:
            clock = time.perf_counter()
            left += budget - (probe_s if budget == budgets[-1] else 0.0)  # the largest budget pays the probe
            pool = [(c, sw.predicted(c)) for c in grid if c not in sw.results]
            fits = [(c, p) for c, p in pool if p <= budget]
            # the cheap independent baselines first, then the rest from the most expensive down
            chosen = sorted(sample(fits, s.max_configs, budget, s.seed),
                            key=lambda c: (c.strategy != "independent", -sw.predicted(c)))
            configs: list[dict[str, Any]] = []
            for k, c in enumerate(chosen, 1):
                tick(ahead(budget, clock), budget=f"{budget:g} s", config=f"{k}/{len(chosen)}")
                need, predicted = sw.incremental(c), sw.predicted(c)  # recorded before the run
                spent = time.perf_counter() - clock
                if predicted > budget or need > left - spent:
                    reason = (f"predicted {predicted:.0f} s by now, over the budget" if predicted > budget else
                              f"needs about {need:.0f} s of the {max(left - spent, 0):.0f} s left for this budget")
                    configs.append(_row(c, None, predicted, reason=reason))
                    continue
                res = sw.run(c, budget)
                configs.append(_row(c, res, predicted))
                tick(ahead(budget, clock), budget=f"{budget:g} s", config=f"{k}/{len(chosen)}",
                     error=f"{res['error']:.3f}")
            left -= time.perf_counter() - clock
            rows[f"{budget:g}"] = {"configs": configs, "seconds": round(time.perf_counter() - clock, 3),
                                   "over_budget": len(pool) - len(fits)}
        tick(0.0, done=f"{len(sw.results)} configurations run")
        bar.close()
        finish_rows(sw, rows)
        result = {"error": sw.error_name, "lower_is_better": True, "device": sw.device,
                  "faces": {"train": int(len(sw.order)), "test": int(len(sw.test))},
                  "probe": {b: {"faces_per_s": round(1 / k.face_s, 2), "create_s": round(k.create_s, 3),
                                "train_fixed_s": round(k.train_s, 3), "step_ms": round(1e3 * k.step_s, 3),
                                "joint_fixed_s": round(k.joint_s, 3), "joint_step_ms": round(1e3 * k.joint_step_s, 3)}
                            for b, k in sw.costs.items()},
                  "probe_s": round(probe_s, 3), "budgets": rows}
        result["conclusion"] = conclusion(result)
        result["seconds"] = round(time.perf_counter() - start, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_outputs(result, out)
    return result


def _check_settings(s: SweepSettings, strategies: Sequence[str]) -> None:
    problems = []
    if not s.budgets or min(s.budgets) <= 0:
        problems.append("--budgets must be positive seconds")
    if not s.fractions or not all(0 < f <= 1 for f in s.fractions):
        problems.append("--fractions must lie in (0, 1]")
    if not s.steps or min(s.steps) < 1:
        problems.append("--steps must be positive")
    bad = [x for x in s.schedules if x not in SCHEDULES]
    if bad or not s.schedules:
        problems.append(f"--schedules: choose from {', '.join(SCHEDULES)}")
    bad = [x for x in s.strategies if x not in strategies]
    if bad or not s.strategies:
        problems.append(f"--strategies: choose from {', '.join(strategies)}")
    if s.max_configs < 1 or s.shots < 1 or s.repeats < 1:
        problems.append("--max-configs, --shots and --repeats must be at least 1")
    if problems:
        raise ProxytasksError("; ".join(problems))
