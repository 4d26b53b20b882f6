"""The run report's inputs: where each is found in a run folder, and reading and checking them.

:func:`locate` finds the inputs of :func:`proxytasks.report.write_report` (given paths or
the defaults of :data:`DEFAULTS` inside the run folder); :func:`load_inputs` reads every
input found. An input that exists but cannot be read, or that names faces the run's
manifest does not hold, is a :class:`ProxytasksError` naming the file (and line).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Sequence

import yaml

from .errors import ProxytasksError

# Where each input is looked for inside the run folder when not given (first found wins).
DEFAULTS = {"manifest": ("tracked.jsonl", "manifest.jsonl"), "pairs": ("pairs.npz",),
            "clusters": ("clusters.csv",), "names": ("names.csv",), "suggestions": ("suggestions.csv",),
            "metrics": ("benchmark/metrics.json", "metrics.json"), "train_run": ("run",),
            "budget": ("budget/budget.json", "budget.json")}
# The recipe commands that write each input: a run whose recipe.yaml has none of them did not
# ask for that input (its report section is left out instead of saying "Missing").
PRODUCERS = {"manifest": ("track", "ingest", "import", "synth", "merge-manifests"), "pairs": ("pairs",),
             "clusters": ("cluster",), "names": ("name",), "suggestions": ("suggest",),
             "metrics": ("benchmark",), "train_run": ("train",), "budget": ("budget",)}


def locate(run_dir: Path, given: dict[str, Any]) -> dict[str, Path | None]:
    """Each input's path: the one given (which must exist), else the first of
    :data:`DEFAULTS` found inside ``run_dir``, else None."""
    found: dict[str, Path | None] = {}
    for key, candidates in DEFAULTS.items():
        if given.get(key) is not None:
            path = Path(given[key])
            if not path.exists():
                raise ProxytasksError(f"{path}: not found (given as --{key.replace('_', '-')})")
            found[key] = path
        else:
            found[key] = next((run_dir / c for c in candidates if (run_dir / c).exists()), None)
    return found


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ProxytasksError(f"{path}: not readable JSON ({e})") from None


def _read_csv(path: Path, required: Sequence[str]) -> list[tuple[int, dict[str, str]]]:
    """``(line, row)`` per CSV row; the header must hold ``required``."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            if reader.fieldnames is None or not set(required) <= set(reader.fieldnames):
                raise ProxytasksError(f"{path}: expected a CSV with columns {','.join(required)}")
            return [(reader.line_num, {k: v or "" for k, v in row.items() if k is not None})
                    for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ProxytasksError(f"{path}: not a readable CSV ({e})") from None


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows, line = [], 0
    try:
        with open(path, encoding="utf-8") as fh:
            for line, text in enumerate(fh, 1):
                if text.strip():
                    row = json.loads(text)
                    if not isinstance(row, dict):
                        raise ValueError("not a JSON object")
                    rows.append(row)
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ProxytasksError(f"{path}:{line}: not a JSON object per line ({e})") from None
    return rows


def _check_ids(path: Path, rows: list[tuple[int, dict[str, str]]], pos: dict[str, int] | None,
               columns: Sequence[str]) -> None:
    for line, row in rows:
        for col in columns:
            if pos is not None and row.get(col) and row[col] not in pos:
                raise ProxytasksError(f"{path}:{line}: unknown face id {row[col]!r}; "
                                      "was this file made from the run's manifest?")


def load_inputs(paths: dict[str, Path | None], run_dir: Path) -> dict[str, Any]:
    """Read every input found (and the run folder's ``recipe.yaml``); corrupt inputs raise
    :class:`ProxytasksError` naming the file."""
    from .manifest import Manifest

    d: dict[str, Any] = {}
    if paths["manifest"] is not None:
        d["manifest"] = Manifest.read(paths["manifest"], check_files=False)
        ids = [f.id for f in d["manifest"].faces]
        d["pos"] = {face_id: i for i, face_id in enumerate(ids)}
        if paths["pairs"] is not None:
            from .evaluate import audit_pairs
            from .pairs import PairSet

            d["audit"] = audit_pairs(d["manifest"], PairSet.load(paths["pairs"], face_ids=ids))
        if paths["clusters"] is not None:
            from .cluster import read_clusters

            d["clusters"] = read_clusters(paths["clusters"], ids)
    if paths["names"] is not None:
        rows = _read_csv(paths["names"], ("id", "name", "confidence"))
        _check_ids(paths["names"], rows, d.get("pos"), ("id",))
        names = {}
        for line, row in rows:
            try:
                conf = float(row["confidence"]) if row["confidence"].strip() else None
            except ValueError:
                raise ProxytasksError(f"{paths['names']}:{line}: confidence {row['confidence']!r} "
                                      "is not a number") from None
            names[row["id"]] = (row["name"], conf)
        d["names"] = names
    if paths["suggestions"] is not None:
        rows = _read_csv(paths["suggestions"], ("kind", "id"))
        _check_ids(paths["suggestions"], rows, d.get("pos"), ("id", "id2"))
        d["suggestions"] = rows
    if paths["metrics"] is not None:
        d["metrics"] = _read_json(paths["metrics"])
        if not isinstance(d["metrics"], dict) or not isinstance(d["metrics"].get("methods", {}), dict):
            raise ProxytasksError(f"{paths['metrics']}: expected a metrics object (Contract 2)")
        _check_active(paths["metrics"], d["metrics"].get("active"))
    if paths["budget"] is not None:
        d["budget"] = _read_json(paths["budget"])
        rows = d["budget"].get("budgets") if isinstance(d["budget"], dict) else None
        if not isinstance(rows, dict) or not all(isinstance(r, dict) and isinstance(r.get("configs"), list)
                                                 for r in rows.values()):
            raise ProxytasksError(f"{paths['budget']}: expected a budget sweep (budget.json of `proxytasks budget`)")
    if paths["train_run"] is not None:
        if (paths["train_run"] / "train_log.jsonl").is_file():
            d["train_log"] = _read_jsonl(paths["train_run"] / "train_log.jsonl")
        if (paths["train_run"] / "config.json").is_file():
            d["train_config"] = _read_json(paths["train_run"] / "config.json")
    if (run_dir / "recipe.yaml").is_file():
        try:
            d["recipe"] = yaml.safe_load((run_dir / "recipe.yaml").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
            raise ProxytasksError(f"{run_dir / 'recipe.yaml'}: not readable YAML ({e})") from None
    return d


def _check_active(path: Path, active: Any) -> None:
    ok = active is None or (isinstance(active, dict) and all(
        isinstance(pts, list) and all(isinstance(p, list) and len(p) == 2 for p in pts)
        for pts in active.values()))
    if not ok:
        raise ProxytasksError(f"{path}: 'active' must map each strategy to [[names_typed, accuracy], ...]")


def asked_for(recipe: Any, key: str) -> bool:
    """Whether the run's recipe (``recipe.yaml`` as loaded; None when there is none) has a
    step that writes the input ``key``; without a recipe every input counts as asked for."""
    if not isinstance(recipe, dict) or not isinstance(recipe.get("steps"), list):
        return True
    commands = {str(name).split()[0] for step in recipe["steps"] if isinstance(step, dict) for name in step}
    return bool(commands & set(PRODUCERS[key]))
