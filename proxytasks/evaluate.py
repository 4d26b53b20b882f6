"""Evaluation against ground truth: the rule audit and tracking quality.

Ground truth is the manifest's ``identity`` (and, for tracking, optionally a true
appearance label per face); rules and the tracker never read it.
"""
from __future__ import annotations

import os
from collections import Counter, defaultdict
from typing import Any, Sequence

import numpy as np

from .errors import ProxytasksError
from .manifest import Manifest
from .pairs import PairSet


def _identity_codes(manifest: Manifest) -> tuple[np.ndarray, bool]:
    codes, table = manifest.codes("identity")
    return codes, bool(table)


def audit_pairs(manifest: Manifest, pairs: PairSet) -> dict[str, Any]:
    """Per rule: pairs, label, precision against ``identity``, faces and identities covered.

    Precision is over the pairs whose two faces both carry an identity (null when none
    do); ``identities_covered`` is null when the manifest has no identity at all. The
    result is exactly ``{"rules": {name: {...}}, "conflicts": int}``.
    """
    ident, has_identity = _identity_codes(manifest)
    rules: dict[str, Any] = {}
    for k, info in enumerate(pairs.rules):
        rows = pairs.rule == k
        i, j = pairs.i[rows], pairs.j[rows]
        faces = np.unique(np.concatenate([i, j]))
        known = (ident[i] >= 0) & (ident[j] >= 0)
        agree = (ident[i][known] == ident[j][known]) == (info.label == "same")
        covered = ident[faces]
        rules[info.name] = {
            "pairs": int(rows.sum()),
            "label": info.label,
            "precision": float(agree.mean()) if known.any() else None,
            "faces_covered": int(len(faces)),
            "identities_covered": int(len(np.unique(covered[covered >= 0]))) if has_identity else None,
        }
    return {"rules": rules, "conflicts": pairs.conflicts}


def format_audit(audit: dict[str, Any], n_faces: int) -> str:
    """The audit as a short text table."""
    head = f"{'rule':<20} {'label':<9} {'pairs':>10} {'precision':>9} {'faces':>14} {'identities':>10}"
    lines = [head, "-" * len(head)]
    for name, r in audit["rules"].items():
        prec = "-" if r["precision"] is None else f"{r['precision']:.4f}"
        ids = "-" if r["identities_covered"] is None else str(r["identities_covered"])
        share = f"{r['faces_covered']} ({100 * r['faces_covered'] / max(n_faces, 1):.0f}%)"
        lines.append(f"{name:<20} {r['label']:<9} {r['pairs']:>10} {prec:>9} {share:>14} {ids:>10}")
    lines.append(f"conflicts resolved: {audit['conflicts']}")
    return "\n".join(lines)


def true_appearances(manifest: Manifest, max_gap: int = 2) -> list[str | None]:
    """Continuous appearances derived from ``identity``: runs of one identity in one media
    (and shot, when known) with frame gaps of at most ``max_gap + 1``."""
    by_person: dict[tuple, list[tuple[int, int]]] = defaultdict(list)
    for idx, f in enumerate(manifest.faces):
        if f.identity is not None and f.frame is not None:
            by_person[(f.media, f.shot, f.identity)].append((f.frame, idx))
    out: list[str | None] = [None] * len(manifest)
    for key, items in by_person.items():
        items.sort()
        run, prev = 0, None
        for frame, idx in items:
            if prev is not None and frame - prev > max_gap + 1:
                run += 1
            out[idx] = f"{key}#{run}"
            prev = frame
    return out


def read_appearances(path: str | os.PathLike, manifest: Manifest) -> list[str | None]:
    """The true appearance of each face of ``manifest`` from a JSONL file with ``id`` and
    ``appearance`` per face (a synthetic episode's ``truth.jsonl``); None where it has none."""
    from .manifest import parse_line

    found: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8") as fh:
            for text in fh:
                if text.strip():
                    rec = parse_line(text)
                    found[str(rec["id"])] = str(rec["appearance"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ProxytasksError(f"{path}: cannot read truth ({type(e).__name__}: {e})") from None
    return [found.get(f.id) for f in manifest.faces]


def track_quality(manifest: Manifest, appearances: Sequence[str | None] | None = None,
                  max_gap: int = 2) -> dict[str, Any]:
    """Track statistics, plus purity and fragmentation when ground truth is known.

    - ``purity``: share of tracked faces whose identity is their track's majority identity;
    - ``fragmentation``: tracks per true continuous appearance (1.0 is perfect), over the
      appearances in ``appearances`` or, when not given, derived from ``identity``.
    """
    tracks: dict[str, list[int]] = defaultdict(list)
    for idx, f in enumerate(manifest.faces):
        if f.track is not None:
            tracks[f"{f.media}\0{f.track}"].append(idx)
    lengths = np.array([len(v) for v in tracks.values()]) if tracks else np.zeros(0, int)
    report: dict[str, Any] = {
        "tracks": len(tracks),
        "tracked_faces": int(lengths.sum()),
        "faces_in_multi_face_tracks": int(lengths[lengths >= 2].sum()),
        "mean_track_length": float(lengths.mean()) if len(lengths) else 0.0,
        "purity": None,
        "fragmentation": None,
    }
    ident = [f.identity for f in manifest.faces]
    if any(ident[i] is not None for members in tracks.values() for i in members):
        right = total = 0
        for members in tracks.values():
            names = Counter(ident[i] for i in members if ident[i] is not None)
            if names:
                right += names.most_common(1)[0][1]
                total += sum(names.values())
        report["purity"] = right / total
    if appearances is None and any(i is not None for i in ident):
        appearances = true_appearances(manifest, max_gap)
    if appearances is not None:
        spans: dict[str, set] = defaultdict(set)
        for idx, app in enumerate(appearances):
            if app is not None and manifest.faces[idx].frame is not None:
                f = manifest.faces[idx]
                spans[app].add(f.track if f.track is not None else f"untracked:{idx}")
        if spans:
            report["fragmentation"] = float(np.mean([len(s) for s in spans.values()]))
            report["appearances"] = len(spans)
    return report


def cluster_report(manifest: Manifest, labels: np.ndarray) -> dict[str, Any]:
    """Cluster counts, plus purity, NMI and BCubed F1 over the faces with an identity."""
    from .metrics import clustering_metrics

    sizes = np.bincount(labels[labels >= 0]) if (labels >= 0).any() else np.zeros(0, int)
    report: dict[str, Any] = {"clusters": int(len(sizes)), "largest": int(sizes.max(initial=0)),
                              "singletons": int((sizes == 1).sum())}
    known = np.array([f.identity is not None for f in manifest.faces])
    if known.any():
        truth = [f.identity for f in manifest.faces if f.identity is not None]
        report.update({k: v for k, v in clustering_metrics(truth, labels[known]).items() if k != "clusters"})
    return report
