"""Shared output format of the benchmarks: one JSON object per line with fixed keys."""
from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
sys.path.insert(0, str(REPO))


def emit(bench: str, metric: str, value: float | None, unit: str, peer: str, peer_value: float | None,
         ratio: float | None, target: str, met: bool) -> dict:
    """Print and return one result line (ratio: how many times better than the peer)."""
    row = {"bench": bench, "metric": metric, "value": value, "unit": unit, "peer": peer,
           "peer_value": peer_value, "ratio": ratio, "target": target, "met": bool(met)}
    print(json.dumps(row), flush=True)
    return row
