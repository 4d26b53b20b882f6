"""The budgeted step loop: its stop rule, its progress bar, and budgets that carry over a resume."""
import json
import time

import numpy as np
import pytest
import torch

from proxytasks.loop import Budget, Every, StepLoop, command_start, process_start
from proxytasks.train import TrainConfig, train

from .test_train import _features, _scene


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_stops_at_the_step_count():
    loop = StepLoop(7, progress=False)
    assert list(loop) == list(range(7)) and loop.stopped == "steps" and loop.step == 7
    resumed = StepLoop(7, step=4, progress=False)
    assert list(resumed) == [4, 5, 6]


def test_stops_before_a_step_would_overrun_the_deadline():
    start = time.perf_counter()
    loop = StepLoop(None, deadline=start + 0.5, reserve=0.1, progress=False)
    for _ in loop:
        spin(0.02)
    end = time.perf_counter()
    assert loop.stopped == "time budget" and 5 <= loop.step <= 25
    assert end <= start + 0.5  # the reserve is left over
    assert end >= start + 0.5 - 0.1 - 3 * 0.02 - 0.05  # ... and not much more


def test_always_runs_min_steps_even_past_the_deadline():
    loop = StepLoop(None, deadline=time.perf_counter() - 1, min_steps=3, progress=False)
    assert list(loop) == [0, 1, 2] and loop.stopped == "time budget"
    assert list(StepLoop(None, deadline=time.perf_counter() - 1, step=5, min_steps=3, progress=False)) == []


def test_the_bar_counts_seconds_of_the_budget_or_steps(capsys):
    by_time = StepLoop(None, deadline=time.perf_counter() + 30, progress=True)
    assert by_time.bar.total == pytest.approx(30, abs=0.2) and by_time.bar.unit == "s"
    by_time.close()
    capped = StepLoop(10 ** 6, deadline=time.perf_counter() + 30, progress=True, by_time=True)  # a cap, not a goal
    assert capped.bar.total == pytest.approx(30, abs=0.2) and capped.bar.unit == "s"
    capped.close()
    by_steps = StepLoop(12, progress=True)
    assert by_steps.bar.total == 12
    for _ in by_steps:
        pass
    assert by_steps.bar.n == 12


def test_budget_and_every():
    b = Budget(10.0, start=100.0, spent_before=4.0)
    assert b.deadline == 106.0 and b.left(now=103.0) == 3.0 and b.spent(now=103.0) == 7.0
    assert b.point(0.5) == 103.0
    assert Budget(10.0, 100.0, spent_before=12.0).deadline == 100.0  # spent: nothing left
    assert Budget(None, 100.0).deadline is None and Budget(None, 100.0).left() is None
    every = Every(steps=3)
    assert [s for s in range(1, 10) if every.due(s)] == [3, 6, 9]
    timed = Every(seconds=0.05)
    assert not timed.due(1)
    time.sleep(0.06)
    assert timed.due(2) and not timed.due(3)
    both = Every(steps=4, seconds=0.05)  # whichever comes first, counted from when it was last due
    assert [s for s in range(1, 9) if both.due(s)] == [4, 8]
    time.sleep(0.06)
    assert both.due(9) and not both.due(10) and both.due(12)
    assert time.perf_counter() - 3600 <= process_start() <= time.perf_counter()


def test_command_start_is_the_process_start_only_for_a_process_started_for_the_command():
    start = process_start()
    assert command_start(None) is None  # not run through the CLI group: from the call
    assert abs(command_start(start + 2.0) - start) < 0.05  # a fresh `proxytasks train`: its imports count
    assert command_start(start + 120.0) == start + 120.0  # inside a long-lived process: from the group's call


def test_resume_keeps_the_budget(tmp_path):
    manifest, pairs, ident = _scene()
    feats = _features(ident, nuisance=1.0, width=256)  # the trunk width of timm's tiny test model
    cfg = dict(backbone="test_efficientnet", weights="none", input_size=32, dim=16, views=("plain",),
               steps=10 ** 9, init="random")  # the budget ends every part, not the steps
    first = train(manifest, pairs, tmp_path / "run", TrainConfig(**cfg, time_budget=3.0), progress=False,
                  features=feats)
    assert first["stopped"] == "time budget" and first["steps"] >= 10
    spent = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["spent"]
    assert spent == pytest.approx(max(3.0, first["budget"]["spent"]), abs=0.5)  # stopped by it: all spent
    again = train(manifest, pairs, tmp_path / "run", TrainConfig(**cfg, time_budget=3.0), resume=True,
                  progress=False, features=feats)
    assert again["steps"] == first["steps"]  # no fresh budget on top of the one spent
    assert again["budget"]["spent_before"] == pytest.approx(spent, abs=0.01)
    larger = spent + 4.0  # the whole run's budget, raised: the difference is trained
    more = train(manifest, pairs, tmp_path / "run", TrainConfig(**cfg, time_budget=larger), resume=True,
                 progress=False, features=feats)
    assert more["steps"] > first["steps"] and more["budget"]["spent_before"] >= spent
    assert more["budget"]["spent"] <= max(1.1 * larger, larger + 5)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == more["steps"] and np.all(np.diff([r["step"] for r in log]) > 0)
