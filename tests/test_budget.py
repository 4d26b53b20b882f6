"""The compute-budget sweep: scenes and fractions, cost prediction, sampling, the best
configuration per budget and the conclusion, the CLI, and the acceptance run."""
from __future__ import annotations

import json
import time

import numpy as np
import pytest
from click.testing import CliRunner

from proxytasks.budget import (Candidate, SweepSettings, budget_sweep, candidates, conclusion, first_scenes,
                               scenes_order)
from proxytasks.budget_grid import sample
from proxytasks.budget_report import finish_rows
from proxytasks.cli import cli
from proxytasks.pairs import PairSet, RuleInfo

RULES = [RuleInfo("same-track", "same", 1.0), RuleInfo("same-frame", "different", 1.0)]


def _pairs(rows: list[tuple[int, int, int]], n: int) -> PairSet:
    i, j, r = (np.array(c) for c in zip(*rows))
    return PairSet(i, j, r, RULES, n)


def test_scenes_are_kept_whole_and_fractions_nest():
    # scenes {0,1,2}, {3,4}, {5}, {6,7,8,9}; face 9 is held out
    ps = _pairs([(0, 1, 0), (1, 2, 1), (3, 4, 1), (6, 7, 0), (7, 8, 0), (8, 9, 0)], 10)
    train = np.ones(10, bool)
    train[9] = False
    order, starts = scenes_order(ps, train, seed=3)
    assert sorted(order.tolist()) == list(range(9))
    scenes = [set(order[a:b].tolist()) for a, b in zip(starts, np.r_[starts[1:], len(order)])]
    assert sorted(map(sorted, scenes)) == [[0, 1, 2], [3, 4], [5], [6, 7, 8]]
    previous: set[int] = set()
    for f in (0.1, 0.25, 0.5, 0.75, 1.0):
        faces = set(first_scenes(order, starts, f).tolist())
        assert len(faces) >= f * 9 - 1e-9
        assert previous <= faces  # nested
        assert all(s <= faces or not (s & faces) for s in scenes)  # whole scenes only
        previous = faces
    assert previous == set(range(9))
    assert scenes_order(ps, train, seed=3)[0].tolist() == order.tolist()


def test_grid_and_sampling():
    s = SweepSettings(fractions=(0.5, 1.0), steps=(10, 100), schedules=("constant", "cosine"))
    grid = candidates(s, ["a", "b"])
    assert sum(c.strategy == "independent" for c in grid) == 2
    assert sum(c.strategy == "sequential" for c in grid) == 2 * 2 * 2 * 2
    assert sum(c.strategy == "global" for c in grid) == 2 * 2 * 2  # first schedule only
    assert all(c.joint_steps == s.joint_steps for c in grid if c.strategy == "global")
    assert grid[5].base == Candidate("sequential", grid[5].backbone, grid[5].fraction, grid[5].steps,
                                     grid[5].lr_schedule)
    pool = [(c, 1.0 + k) for k, c in enumerate(grid)]
    picked = sample(pool, 3, 60.0, seed=0)
    assert [c for c in picked if c.strategy == "independent"] == grid[:2]  # always kept
    assert len(picked) == 5 and picked == sample(pool, 3, 60.0, seed=0)
    assert sample(pool, 100, 60.0, 0) == [c for c, _ in pool]


def _result(runs: dict[str, list[dict]]) -> dict:
    rows = {b: {"configs": [dict(r, status="run", predicted_s=r["actual_s"]) for r in rs], "over_budget": 0}
            for b, rs in runs.items()}
    return {"budgets": rows, "error": "test error"}


def _cfg(strategy, backbone, actual, error, steps=100):
    return {"strategy": strategy, "backbone": backbone, "fraction": 1.0, "steps": steps, "lr_schedule": "constant",
            "joint_steps": 0, "pairs": 10, "actual_s": actual, "error": error}


class _Fixed:
    """Stands for a sweep in :func:`finish_rows`: actual seconds as recorded."""

    def __init__(self, result):
        self.by = {(r["strategy"], r["backbone"], r["steps"]): r["actual_s"]
                   for b in result["budgets"].values() for r in b["configs"]}

    def actual(self, c):
        return self.by[(c.strategy, c.backbone, c.steps)], 0.0


def test_best_per_budget_uses_every_configuration_that_fits():
    result = _result({"10": [_cfg("independent", "a", 4.0, 0.4, steps=0)],
                      "100": [_cfg("sequential", "a", 50.0, 0.1), _cfg("sequential", "b", 90.0, 0.3)]})
    finish_rows(_Fixed(result), result["budgets"])
    rows = result["budgets"]
    assert rows["10"]["best"]["strategy"] == "independent"
    assert rows["100"]["best"]["backbone"] == "a" and rows["100"]["winner"] == "sequential"
    assert rows["100"]["by_strategy"]["independent"]["error"] == 0.4  # from the smaller budget
    text = conclusion(result)
    assert text.startswith("The best configuration changes with the budget (strategy, steps")
    assert "at 10 s it is independent a" in text and "at 100 s it is sequential a" in text


def test_conclusion_explains_when_the_best_does_not_change():
    result = _result({"10": [_cfg("sequential", "a", 5.0, 0.1)], "100": [_cfg("sequential", "b", 80.0, 0.2)]})
    finish_rows(_Fixed(result), result["budgets"])
    text = conclusion(result)
    assert text.startswith("The same configuration is best at every budget")
    assert "fits the smallest budget (10 s)" in text and "none of the 1 configurations that cost more" in text
    lone = _result({"10": [_cfg("sequential", "a", 5.0, 0.1)], "100": []})
    finish_rows(_Fixed(lone), lone["budgets"])
    assert "no configuration costing between 10 and 100 s could be run" in conclusion(lone)
    over = _result({"10": [_cfg("sequential", "a", 5.0, 0.1)], "100": [_cfg("sequential", "b", 120.0, 0.05)]})
    finish_rows(_Fixed(over), over["budgets"])  # b overran every budget: it fits none and is no rival
    assert "no configuration costing between" in conclusion(over)
    nothing = _result({"10": [], "100": []})
    finish_rows(_Fixed(nothing), nothing["budgets"])
    assert conclusion(nothing).startswith("No configuration could be run")


def test_conclusion_texts_on_hand_made_sweeps():
    """Each branch of the conclusion, word for word, on results whose right answer is known."""
    seq = "sequential {} 1 of pairs, {} steps constant"
    # a cheap configuration listed (run) only under the largest budget is the best of the smallest
    # one too; between the budgets only the steps change
    moved = _result({"10": [_cfg("sequential", "a", 9.0, 0.3, steps=100)],
                     "100": [_cfg("sequential", "a", 6.0, 0.2, steps=50),
                             _cfg("sequential", "a", 60.0, 0.1, steps=400)]})
    finish_rows(_Fixed(moved), moved["budgets"])
    assert moved["budgets"]["10"]["best"]["steps"] == 50 and moved["budgets"]["100"]["best"]["steps"] == 400
    assert conclusion(moved) == ("The best configuration changes with the budget (steps): at 10 s it is "
                                 f"{seq.format('a', 50)} (error 0.2000, 6 s); at 100 s it is "
                                 f"{seq.format('a', 400)} (error 0.1000, 60 s).")
    # equal errors: the cheaper configuration is the best, so nothing changes
    tie = _result({"10": [_cfg("sequential", "a", 5.0, 0.1)], "100": [_cfg("sequential", "b", 50.0, 0.1)]})
    finish_rows(_Fixed(tie), tie["budgets"])
    assert conclusion(tie) == (f"The same configuration is best at every budget: {seq.format('a', 100)} (error "
                               "0.1000) costs 5 s, which fits the smallest budget (10 s), and none of the 1 "
                               "configurations that cost more than 10 s did better (the best of them: "
                               f"{seq.format('b', 100)}, error 0.1000). On these faces more compute buys no "
                               "lower error beyond it.")
    late = _result({"10": [], "100": [_cfg("sequential", "a", 50.0, 0.1)]})
    finish_rows(_Fixed(late), late["budgets"])
    assert late["budgets"]["10"]["best"] is None
    assert conclusion(late) == (f"Nothing fits the smallest budget (10 s); at 100 s the best is "
                                f"{seq.format('a', 100)} (error 0.1000, 50 s).")
    one = _result({"10": [_cfg("independent", "a", 4.0, 0.4, steps=0), _cfg("sequential", "a", 9.0, 0.25)]})
    finish_rows(_Fixed(one), one["budgets"])
    assert conclusion(one) == f"One budget (10 s): the best is {seq.format('a', 100)} (error 0.2500)."


@pytest.mark.parametrize("args, culprit", [
    (["--budgets", "0,60"], "--budgets"),
    (["--budgets", "sixty"], "--budgets"),
    (["--fractions", "1.5"], "--fractions"),
    (["--strategies", "joint"], "--strategies"),
    (["--schedules", "step"], "--schedules"),
])
def test_cli_refuses_bad_options(small_episode, tmp_path, args, culprit):
    folder, _, _ = small_episode
    res = CliRunner().invoke(cli, ["-q", "budget", str(folder / "tracked.jsonl"), "--pairs", str(folder / "pairs.npz"),
                                   "-o", str(tmp_path / "b"), *args])
    assert res.exit_code == 2, res.output
    assert culprit in res.output and "Traceback" not in res.output


def test_cli_refuses_pairs_of_another_manifest(small_episode, episode, tmp_path):
    folder, _, _ = small_episode
    res = CliRunner().invoke(cli, ["-q", "budget", str(episode / "manifest.jsonl"), "--pairs",
                                   str(folder / "pairs.npz"), "-o", str(tmp_path / "b")])
    assert res.exit_code == 2 and "pairs" in res.output


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, orl_identities):
    """The acceptance run: a synthetic episode of real faces, three budgets, every strategy."""
    from data_tools.synthetic import make_episode
    from proxytasks.benchmark import tracked_pairs
    from proxytasks.manifest import Manifest

    out = tmp_path_factory.mktemp("budget")
    make_episode(out / "ep", orl_identities, n_identities=8, n_shots=8, seed=1, progress=False)
    manifest, pairs = tracked_pairs(Manifest.read(out / "ep" / "manifest.jsonl"), out, progress=False)
    budgets = (20.0, 40.0, 80.0)
    t0 = time.perf_counter()
    result = budget_sweep(manifest, pairs, out / "budget", SweepSettings(budgets=budgets, max_configs=6),
                          progress=False)
    return out, result, time.perf_counter() - t0, sum(budgets)


@pytest.mark.slow
def test_sweep_records_its_configurations(sweep):
    """Timings (the sum of the budgets, predicted within 25%) are measured by
    bench/budget_sweep.py, not asserted here: wall time depends on the machine's load."""
    out, result, wall, total = sweep
    assert 0 < result["seconds"] <= wall
    assert json.loads((out / "budget" / "budget.json").read_text()) == result
    run = [r for b in result["budgets"].values() for r in b["configs"] if r["status"] == "run"]
    assert len(run) >= 4 and {r["backbone"] for r in run} >= {"mobilenetv2_100", "tf_efficientnet_lite0"}
    assert {r["strategy"] for r in run} >= {"independent", "sequential"}
    for key, b in result["budgets"].items():
        assert b["best"] is None or b["best"]["actual_s"] <= float(key)
        for r in b["configs"]:
            assert set(r) >= {"backbone", "pairs", "steps", "predicted_s", "actual_s", "error"}
            if r["status"] == "run":  # nothing predicted over its budget (just before it) is run
                assert r["predicted_s"] <= float(key), r
            else:  # skipped: over the budget by a refined prediction, or no time left
                assert r["reason"], r
    assert "naming accuracy" in result["error"]


@pytest.mark.slow
def test_predicted_and_actual_seconds_are_recorded(sweep):
    _, result, _, _ = sweep
    for b in result["budgets"].values():
        for r in b["configs"]:
            if r["status"] == "run":
                assert r["predicted_s"] > 0 and r["actual_s"] > 0 and r["feature_s"] <= r["actual_s"], r


@pytest.mark.slow
def test_best_changes_or_is_explained_in_the_report(sweep):
    out, result, _, _ = sweep
    rows = result["budgets"]
    run = [r for b in rows.values() for r in b["configs"] if r["status"] == "run"]
    for key, b in rows.items():  # recomputed from every configuration run, whichever budget listed it
        fit = [r for r in run if r["actual_s"] <= float(key)]
        assert b["best"] == (min(fit, key=lambda r: (r["error"], r["actual_s"])) if fit else None), key
    lo, hi = rows["20"]["best"], rows["80"]["best"]
    assert hi is not None
    text = result["conclusion"]
    assert text == conclusion(result)  # the branches' wording: test_conclusion_texts_on_hand_made_sweeps
    fields = ("strategy", "backbone", "fraction", "steps", "lr_schedule", "joint_steps")
    if lo is None:
        expected = "Nothing fits the smallest budget (20 s); at 80 s the best is "
    elif any(lo[f] != hi[f] for f in fields):
        expected = "The best configuration changes with the budget ("
    else:
        expected = "The same configuration is best at every budget: "
    assert text.startswith(expected), (expected, text)
    res = CliRunner().invoke(cli, ["-q", "report", str(out), "-o", str(out / "report.html")])
    assert res.exit_code == 0, res.output
    page = (out / "report.html").read_text()
    section = page.split('<section id="budget">')[1].split("</section>")[0]
    assert text.replace("'", "&#x27;") in section
    assert section.count("<svg") == 3 and "error vs compute" in section
    assert (out / "budget" / "budget.md").read_text().count("\n|") > 3
