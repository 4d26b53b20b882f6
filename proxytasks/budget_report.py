"""What a compute-budget sweep found, and its outputs (:mod:`proxytasks.budget`).

The analysis of the configurations run (:func:`finish_rows`: actual seconds, the best
configuration per budget and per strategy), the conclusion in words (:func:`conclusion`),
and the outputs: ``budget.json``, ``budget.md`` (:func:`table`) and the SVG plots
(:func:`plots`, drawn with :func:`proxytasks.plots.line_plot`), written by :func:`write_outputs`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .budget_grid import Candidate, describe, key
from .fileio import atomic_write
from .plots import line_plot

def finish_rows(sw: Any, rows: dict[str, Any]) -> None:
    """Actual seconds at the final measured rates; the best configuration per budget and per
    strategy among every configuration run whose actual cost fits the budget."""
    done = []
    for row in (r for b in rows.values() for r in b["configs"] if r["status"] == "run"):
        c = Candidate(row["strategy"], row["backbone"], row["fraction"], row["steps"], row["lr_schedule"],
                      row["joint_steps"])
        row["actual_s"], feature = (round(v, 3) for v in sw.actual(c))
        row["feature_s"] = feature
        done.append(row)
    for budget, entry in rows.items():
        fit = [r for r in done if r["actual_s"] <= float(budget)]
        entry["best"] = min(fit, key=lambda r: (r["error"], r["actual_s"])) if fit else None
        entry["by_strategy"] = {st: (min((r for r in fit if r["strategy"] == st), key=lambda r: (r["error"], r["actual_s"]))
                                     if any(r["strategy"] == st for r in fit) else None)
                                for st in dict.fromkeys(r["strategy"] for r in done)}
        winner = entry["best"]["strategy"] if entry["best"] else None
        entry["winner"] = winner


def conclusion(result: dict[str, Any]) -> str:
    """Whether the best configuration changes between the smallest and the largest budget, and why not."""
    rows = result["budgets"]
    keys = sorted(rows, key=float)
    lo, hi = rows[keys[0]]["best"], rows[keys[-1]]["best"]
    if lo is None and hi is None:
        return "No configuration could be run inside any budget: give larger budgets."
    if lo is None:
        return (f"Nothing fits the smallest budget ({keys[0]} s); at {keys[-1]} s the best is {describe(hi)} "
                f"(error {hi['error']:.4f}, {hi['actual_s']:.0f} s).")
    if len(keys) == 1:
        return f"One budget ({keys[0]} s): the best is {describe(lo)} (error {lo['error']:.4f})."
    if key(lo) != key(hi):
        changed = [name for name, a, b in (("backbone", lo["backbone"], hi["backbone"]),
                                           ("strategy", lo["strategy"], hi["strategy"]),
                                           ("pairs", lo["pairs"], hi["pairs"]), ("steps", lo["steps"], hi["steps"]),
                                           ("schedule", lo["lr_schedule"], hi["lr_schedule"])) if a != b]
        return (f"The best configuration changes with the budget ({', '.join(changed)}): at {keys[0]} s it is "
                f"{describe(lo)} (error {lo['error']:.4f}, {lo['actual_s']:.0f} s); at {keys[-1]} s it is "
                f"{describe(hi)} (error {hi['error']:.4f}, {hi['actual_s']:.0f} s).")
    bigger = [r for k in keys for r in rows[k]["configs"]
              if r["status"] == "run" and float(keys[0]) < r["actual_s"] <= float(keys[-1])]
    why = (f"none of the {len(bigger)} configurations that cost more than {keys[0]} s did better (the best of "
           f"them: {describe(min(bigger, key=lambda r: r['error']))}, error "
           f"{min(r['error'] for r in bigger):.4f})" if bigger else
           f"no configuration costing between {keys[0]} and {keys[-1]} s could be run (larger budgets or "
           "fewer faces would let bigger ones in)")
    return (f"The same configuration is best at every budget: {describe(lo)} (error {lo['error']:.4f}) costs "
            f"{lo['actual_s']:.0f} s, which fits the smallest budget ({keys[0]} s), and {why}. On these faces more "
            "compute buys no lower error beyond it.")


def plots(result: dict[str, Any]) -> list[str]:
    """Inline SVG plots of a sweep: error vs compute (every configuration, the lower envelope
    per budget), the best error per budget of each strategy, predicted vs actual seconds."""
    runs = [r for b in result["budgets"].values() for r in b["configs"] if r["status"] == "run"]
    keys = sorted(result["budgets"], key=float)
    by_strategy = dict.fromkeys(r["strategy"] for r in runs)
    envelope = [(float(k), result["budgets"][k]["best"]["error"]) for k in keys if result["budgets"][k]["best"]]
    scatter = [(f"{st} configurations", [(r["actual_s"], r["error"]) for r in runs if r["strategy"] == st])
               for st in by_strategy]
    out = [line_plot(scatter + [("best within budget", envelope)], title="error vs compute",
                     xlabel="seconds (actual)", ylabel="error", points=[label for label, _ in scatter],
                     width=560, height=320)]
    per = [(st, [(float(k), result["budgets"][k]["by_strategy"][st]["error"]) for k in keys
                 if result["budgets"][k]["by_strategy"].get(st)]) for st in by_strategy]
    out.append(line_plot(per, title="best error per budget, by strategy", xlabel="budget (s)", ylabel="error"))
    most = max([r["actual_s"] for r in runs] + [r["predicted_s"] for r in runs] + [1.0])
    out.append(line_plot([("configurations", [(r["actual_s"], r["predicted_s"]) for r in runs]),
                          ("predicted = actual", [(0.0, 0.0), (most, most)])],
                         title="predicted vs actual seconds", xlabel="actual (s)", ylabel="predicted (s)",
                         points=["configurations"]))
    return out


def table(result: dict[str, Any]) -> str:
    """The sweep as Markdown: the best configuration per budget, then every configuration."""
    lines = [f"# Budget sweep\n\nerror: {result['error']} (lower is better)\n", result["conclusion"], "",
             "| budget (s) | best configuration | error | actual (s) | predicted (s) | winning strategy | run | skipped |",
             "|---:|---|---:|---:|---:|---|---:|---:|"]
    for k in sorted(result["budgets"], key=float):
        b = result["budgets"][k]
        best = b["best"]
        run = sum(r["status"] == "run" for r in b["configs"])
        cells = [k, describe(best), _fmt(best and best["error"]), _fmt(best and best["actual_s"], 1),
                 _fmt(best and best["predicted_s"], 1), b["winner"] or "–", str(run),
                 str(len(b["configs"]) - run + b["over_budget"])]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| budget (s) | configuration | pairs | error | predicted (s) | actual (s) | status |",
              "|---:|---|---:|---:|---:|---:|---|"]
    for k in sorted(result["budgets"], key=float):
        for r in result["budgets"][k]["configs"]:
            lines.append(f"| {k} | {describe(r)} | {_fmt(r['pairs'], 0)} | {_fmt(r['error'])} | "
                         f"{_fmt(r['predicted_s'], 1)} | {_fmt(r['actual_s'], 1)} | {r.get('reason') or r['status']} |")
    return "\n".join(lines) + "\n"


def _fmt(v: Any, digits: int = 4) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def write_outputs(result: dict[str, Any], out: Path) -> None:
    """budget.json, budget.md and the plots, each written atomically."""
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / "budget.json") as fh:
        json.dump(result, fh, indent=2)
    with atomic_write(out / "budget.md") as fh:
        fh.write(table(result))
    for name, svg in zip(("error_vs_compute", "strategies", "predicted_vs_actual"), plots(result)):
        with atomic_write(out / f"budget_{name}.svg") as fh:
            fh.write(svg)
