"""Cheap-label rules: turn frame and track structure into same/different pairs.

A rule is a small class with a ``name``, a ``label`` ("same" or "different"), a
``weight`` and ``pairs(columns) -> (n, 2) int array`` of face indices with ``i < j``.
Rules read only where faces come from (media, frame, track), never ``identity``.

A :class:`RuleSet` applies several rules and resolves conflicts (a pair that one rule
calls "same" and another "different"), by one of two policies:

- ``"different"`` (default): the cannot-link wins and the "same" rows of that pair are
  dropped. Two faces in one frame are almost never one person, while a track that holds
  two faces of one frame is a tracker error; and a wrong must-link merges two people,
  which clustering cannot undo, while a wrong cannot-link only costs one pair.
- ``"drop"``: every row of a conflicting pair is dropped.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import ClassVar, Sequence

import numpy as np

from .errors import ProxytasksError
from .manifest import Manifest
from .pairs import PairSet, RuleInfo
from .registry import Registry

logger = logging.getLogger(__name__)

RULES: Registry[type["Rule"]] = Registry("rule")
DEFAULT_RULES = ("same-frame", "same-track", "track-cooccurrence", "same-photo")
POLICIES = ("different", "drop")


@dataclass
class FaceColumns:
    """The columns rules read, as integer codes (-1 = absent)."""

    media: np.ndarray
    frame: np.ndarray
    track: np.ndarray

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "FaceColumns":
        """Codes for media, frame (-1 for photos) and track (scoped by media)."""
        media, _ = manifest.codes("media")
        tracks: dict[tuple[str, str], int] = {}
        track = np.array([-1 if f.track is None else tracks.setdefault((f.media, f.track), len(tracks))
                          for f in manifest.faces], dtype=np.int64)
        return cls(media=media, frame=manifest.frames(), track=track)

    def __len__(self) -> int:
        return len(self.media)

    def frame_key(self) -> np.ndarray:
        """One code per (media, frame); -1 for photos."""
        span = int(self.frame.max(initial=0)) + 1
        if (int(self.media.max(initial=0)) + 1) * span < 2**63:
            return np.where(self.frame >= 0, self.media * span + self.frame, -1)
        # media * span + frame would overflow int64: rank the distinct (media, frame) instead
        key = np.full(len(self.frame), -1, dtype=np.int64)
        idx = np.flatnonzero(self.frame >= 0)
        order = idx[np.lexsort((self.frame[idx], self.media[idx]))]
        m, f = self.media[order], self.frame[order]
        key[order] = np.cumsum(np.r_[False, (m[1:] != m[:-1]) | (f[1:] != f[:-1])])
        return key


def _groups(keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faces with ``key >= 0`` sorted by key: (order, group starts, group sizes)."""
    idx = np.flatnonzero(keys >= 0)
    order = idx[np.argsort(keys[idx], kind="stable")]
    k = keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(k)])
    return order, starts, sizes


def pairs_within_groups(keys: np.ndarray) -> np.ndarray:
    """Every pair of faces that share a key (``key < 0`` means no group), ``i < j``."""
    order, starts, sizes = _groups(keys)
    out = [np.zeros((0, 2), dtype=np.int64)]
    for size in np.unique(sizes[sizes >= 2]):
        members = order[starts[sizes == size][:, None] + np.arange(size)]
        a, b = np.triu_indices(size, 1)
        out.append(np.stack([members[:, a].ravel(), members[:, b].ravel()], axis=1))
    return np.sort(np.concatenate(out), axis=1)


def pairs_across_groups(keys: np.ndarray, group_pairs: np.ndarray) -> np.ndarray:
    """Every (face of group a, face of group b) for each row (a, b) of ``group_pairs``."""
    order, starts, sizes = _groups(keys)
    sorted_keys = keys[order][starts]  # the key of each group, ascending
    ga = np.searchsorted(sorted_keys, group_pairs[:, 0])
    gb = np.searchsorted(sorted_keys, group_pairs[:, 1])
    na, nb = sizes[ga], sizes[gb]
    counts = na * nb
    total = int(counts.sum())
    if total == 0:
        return np.zeros((0, 2), dtype=np.int64)
    row = np.repeat(np.arange(len(group_pairs)), counts)
    local = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    first = order[starts[ga][row] + local // nb[row]]
    second = order[starts[gb][row] + local % nb[row]]
    return np.sort(np.stack([first, second], axis=1), axis=1)


class Rule:
    """Base class: a named source of pairs with one label and a weight."""

    name: ClassVar[str]
    label: ClassVar[str]
    default_weight: ClassVar[float] = 1.0

    def __init__(self, weight: float | None = None) -> None:
        self.weight = self.default_weight if weight is None else float(weight)

    def pairs(self, cols: FaceColumns) -> np.ndarray:
        """(n, 2) int64 face indices with ``i < j``."""
        raise NotImplementedError


@RULES.register("same-frame")
class SameFrame(Rule):
    """Two faces in one video frame are two different people."""

    name, label = "same-frame", "different"

    def pairs(self, cols: FaceColumns) -> np.ndarray:
        return pairs_within_groups(cols.frame_key())


@RULES.register("same-track")
class SameTrack(Rule):
    """Faces a tracker followed through successive frames are one person."""

    name, label = "same-track", "same"

    def pairs(self, cols: FaceColumns) -> np.ndarray:
        return pairs_within_groups(cols.track)


@RULES.register("track-cooccurrence")
class TrackCooccurrence(Rule):
    """Every face of two tracks that share a frame: different people."""

    name, label = "track-cooccurrence", "different"

    def pairs(self, cols: FaceColumns) -> np.ndarray:
        frame_pairs = pairs_within_groups(cols.frame_key())
        ta, tb = cols.track[frame_pairs[:, 0]], cols.track[frame_pairs[:, 1]]
        keep = (ta >= 0) & (tb >= 0) & (ta != tb)
        track_pairs = np.unique(np.sort(np.stack([ta[keep], tb[keep]], axis=1), axis=1), axis=0)
        return pairs_across_groups(cols.track, track_pairs)


@RULES.register("same-photo")
class SamePhoto(Rule):
    """Two faces in one photo are different people; weighted lower, since mirrors,
    screens and collages break it."""

    name, label, default_weight = "same-photo", "different", 0.5

    def pairs(self, cols: FaceColumns) -> np.ndarray:
        return pairs_within_groups(np.where(cols.frame < 0, cols.media, -1))


def parse_rules(spec: str | Sequence[str]) -> list[Rule]:
    """Rules from ``"same-frame,same-track"`` or a list; ``name:weight`` sets a weight."""
    names = [s.strip() for s in spec.split(",")] if isinstance(spec, str) else list(spec)
    rules = []
    for item in filter(None, names):
        name, _, weight = item.partition(":")
        try:
            rules.append(RULES.get(name)(float(weight) if weight else None))
        except ValueError:
            raise ProxytasksError(f"rule {item!r}: weight {weight!r} is not a number") from None
    if not rules:
        raise ProxytasksError("no rules given; known rules: " + ", ".join(RULES.names()))
    return rules


class RuleSet:
    """Several rules applied together, with conflicts resolved by ``policy``."""

    def __init__(self, rules: Sequence[Rule] | str = DEFAULT_RULES, policy: str = "different") -> None:
        self.rules: list[Rule] = []
        for item in [rules] if isinstance(rules, str) else rules:
            self.rules.extend([item] if isinstance(item, Rule) else parse_rules(item))
        if policy not in POLICIES:
            raise ProxytasksError(f"unknown conflict policy {policy!r}; use one of {', '.join(POLICIES)}")
        names = [r.name for r in self.rules]
        if len(set(names)) != len(names):
            raise ProxytasksError(f"a rule is listed twice: {names}")
        self.policy = policy

    def apply(self, manifest: Manifest | FaceColumns, face_ids: Sequence[str] | None = None) -> PairSet:
        """All pairs of all rules, conflicts resolved, as a :class:`PairSet`."""
        cols = FaceColumns.from_manifest(manifest) if isinstance(manifest, Manifest) else manifest
        if face_ids is None and isinstance(manifest, Manifest):
            face_ids = [f.id for f in manifest.faces]
        n = len(cols)
        if n >= 2**31:
            raise ProxytasksError(f"{n} faces exceed the 2**31 pair index limit")
        parts, rule_idx = [], []
        for k, rule in enumerate(self.rules):
            p = rule.pairs(cols)
            logger.info("rule %s: %d pairs", rule.name, len(p))
            parts.append(p.astype(np.int32))
            rule_idx.append(np.full(len(p), k, dtype=np.uint8))
        pairs = np.concatenate(parts) if parts else np.zeros((0, 2), np.int32)
        rule = np.concatenate(rule_idx) if rule_idx else np.zeros(0, np.uint8)
        infos = [RuleInfo(r.name, r.label, r.weight) for r in self.rules]
        same = np.array([r.label == "same" for r in self.rules], dtype=bool)[rule]
        keep, conflicts = self._resolve(pairs, same, n)
        return PairSet(pairs[keep, 0], pairs[keep, 1], rule[keep], infos, n_faces=n,
                       face_ids=face_ids, conflicts=conflicts, policy=self.policy)

    def _resolve(self, pairs: np.ndarray, same: np.ndarray, n: int) -> tuple[np.ndarray, int]:
        """Rows to keep and the number of distinct conflicting pairs."""
        if not same.any() or same.all():
            return np.ones(len(pairs), dtype=bool), 0
        key = pairs[:, 0].astype(np.int64) * n + pairs[:, 1]
        same_keys = np.unique(key[same])
        diff_keys = np.unique(key[~same])
        conflicting = np.intersect1d(same_keys, diff_keys, assume_unique=True)
        hit = np.isin(key, conflicting)
        keep = ~hit if self.policy == "drop" else ~(hit & same)
        return keep, int(len(conflicting))
