"""Cheap-label rules: turn frame and track structure into same/different pairs.

A rule is a small class with a ``name``, a ``label`` ("same" or "different"), a
``weight`` and ``pairs(columns) -> (n, 2) int array`` of face indices with ``i < j``.
Rules read only where faces come from (media, frame, track), never ``identity``.
The built-in rules also give ``rows(columns)``, their pairs counted before they are
written (so that :class:`RuleSet` writes every rule straight into the final int32
arrays), and ``contains(columns, i, j)``, a per-row test of whether pairs ``(i, j)``
are among the rule's pairs (so that conflicts are found without sorting all pairs).
A rule without them still works: its pairs are copied and compared by sorting.
The engine that writes the pairs is :mod:`proxytasks.pair_engine`; the columns rules
read are :class:`proxytasks.manifest.FaceColumns`.

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
from operator import attrgetter
from typing import ClassVar, Sequence

import numpy as np

from .defaults import DEFAULT_RULES
from .errors import ProxytasksError
from .manifest import FaceColumns, Manifest
from .pair_engine import (BLOCK, PairRows, pairs_across_groups, pairs_within_groups, rows_across_groups,  # noqa: F401
                          rows_within_groups, write_rules, _member, _sorted_unique)
from .pairs import PairSet, RuleInfo
from .registry import Registry

logger = logging.getLogger(__name__)

RULES: Registry[type["Rule"]] = Registry("rule")
POLICIES = ("different", "drop")


def _frame_key(cols: FaceColumns) -> np.ndarray:
    return cols._cached("frame_key", cols.frame_key)


class Rule:
    """Base class: a named source of pairs with one label and a weight.

    A subclass gives ``pairs``, or ``rows`` (then ``pairs`` comes from it); ``contains``
    is optional (without it, conflicts with this rule are found by sorting its pairs).
    """

    name: ClassVar[str]
    label: ClassVar[str]
    default_weight: ClassVar[float] = 1.0

    def __init__(self, weight: float | None = None) -> None:
        self.weight = self.default_weight if weight is None else float(weight)

    def pairs(self, cols: FaceColumns) -> np.ndarray:
        """(n, 2) int face indices with ``i < j``."""
        if type(self).rows is Rule.rows:
            raise NotImplementedError
        return self.rows(cols).array()

    def rows(self, cols: FaceColumns) -> PairRows:
        """The pairs, counted before they are written."""
        return PairRows.of(self.pairs(cols))

    def contains(self, cols: FaceColumns, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        """Whether each pair ``(i[k], j[k])`` (``i < j``) is one of this rule's pairs."""
        raise NotImplementedError

    @classmethod
    def has_contains(cls) -> bool:
        return cls.contains is not Rule.contains


@RULES.register("same-frame")
class SameFrame(Rule):
    """Two faces in one video frame are two different people."""

    name, label = "same-frame", "different"

    def rows(self, cols: FaceColumns) -> PairRows:
        return rows_within_groups(_frame_key(cols))

    def contains(self, cols: FaceColumns, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        key = _frame_key(cols)
        a = key[i]
        return (a >= 0) & (a == key[j])


@RULES.register("same-track")
class SameTrack(Rule):
    """Faces a tracker followed through successive frames are one person."""

    name, label = "same-track", "same"

    def rows(self, cols: FaceColumns) -> PairRows:
        return rows_within_groups(cols.track)

    def contains(self, cols: FaceColumns, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        a = cols.track[i]
        return (a >= 0) & (a == cols.track[j])


@RULES.register("track-cooccurrence")
class TrackCooccurrence(Rule):
    """Every face of two tracks that share a frame: different people."""

    name, label = "track-cooccurrence", "different"

    @staticmethod
    def tracks(cols: FaceColumns) -> np.ndarray:
        """Track codes below 2**31 (ranked when larger; the order, so the pairs, unchanged)."""
        def make() -> np.ndarray:
            if int(cols.track.max(initial=0)) < 2**31:
                return cols.track
            tracked = cols.track >= 0
            return np.where(tracked, np.searchsorted(_sorted_unique(cols.track[tracked]), cols.track), -1)
        return cols._cached("tracks", make)

    @classmethod
    def track_pairs(cls, cols: FaceColumns) -> tuple[np.ndarray, int]:
        """The co-occurring track pairs ``a < b`` (of :meth:`tracks`) as sorted distinct
        keys ``a * span + b``, and ``span``."""
        def make() -> tuple[np.ndarray, int]:
            track = cls.tracks(cols)
            frame_pairs = rows_within_groups(_frame_key(cols)).array()
            ta, tb = track[frame_pairs[:, 0]], track[frame_pairs[:, 1]]
            keep = (ta >= 0) & (tb >= 0) & (ta != tb)
            ta, tb = ta[keep], tb[keep]
            span = int(track.max(initial=0)) + 1
            return _sorted_unique(np.minimum(ta, tb) * span + np.maximum(ta, tb)), span
        return cols._cached("track_pairs", make)

    def rows(self, cols: FaceColumns) -> PairRows:
        keys, span = self.track_pairs(cols)
        return rows_across_groups(self.tracks(cols), np.stack([keys // span, keys % span], axis=1))

    def contains(self, cols: FaceColumns, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        keys, span = self.track_pairs(cols)
        track = self.tracks(cols)
        ta, tb = track[i], track[j]
        out = (ta >= 0) & (tb >= 0) & (ta != tb)
        if out.any():
            ta, tb = ta[out], tb[out]
            out[out] = _member(np.minimum(ta, tb) * span + np.maximum(ta, tb), keys)
        return out


@RULES.register("same-photo")
class SamePhoto(Rule):
    """Two faces in one photo are different people; weighted lower, since mirrors,
    screens and collages break it."""

    name, label, default_weight = "same-photo", "different", 0.5

    def rows(self, cols: FaceColumns) -> PairRows:
        return rows_within_groups(np.where(cols.frame < 0, cols.media, -1))

    def contains(self, cols: FaceColumns, i: np.ndarray, j: np.ndarray) -> np.ndarray:
        m = cols.media[i]
        return (cols.frame[i] < 0) & (cols.frame[j] < 0) & (m >= 0) & (m == cols.media[j])


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


# built-in rules that never give a common pair: a co-occurrence pair joins two different
# tracks; a frame pair is of video faces, a photo pair of photo faces
_DISJOINT = {(SameTrack, TrackCooccurrence), (SameFrame, SamePhoto)}


def _disjoint(a: Rule, b: Rule) -> bool:
    return (type(a), type(b)) in _DISJOINT or (type(b), type(a)) in _DISJOINT


def low_quality_mask(manifest: Manifest) -> np.ndarray:
    """Per face: marked low quality by ingest (``quality`` below
    :data:`proxytasks.quality.LOW_QUALITY`; faces without a quality are not marked)."""
    from .quality import LOW_QUALITY

    q = np.array(list(map(attrgetter("quality"), manifest.faces)), dtype=np.float64)  # None -> nan
    return q < LOW_QUALITY


def _without_low_quality(manifest: Manifest, i: np.ndarray, j: np.ndarray,
                         rule: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The rows less those that touch a face marked low quality: such faces (the back of a
    head, a hand, a blur) stay in the manifest but give no training pairs."""
    low = low_quality_mask(manifest)
    if not low.any():
        return i, j, rule
    keep = ~(low[i] | low[j])
    logger.info("%d faces marked low quality: %d of %d pairs left out", int(low.sum()),
                int(len(keep) - keep.sum()), len(keep))
    return i[keep], j[keep], rule[keep]


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
        """All pairs of all rules, conflicts resolved, as a :class:`PairSet`: the rows of
        each rule in turn (in the order the rule gives them), less the dropped ones."""
        cols = FaceColumns.from_manifest(manifest) if isinstance(manifest, Manifest) else manifest
        if face_ids is None and isinstance(manifest, Manifest):
            face_ids = [f.id for f in manifest.faces]
        n = len(cols)
        if n >= 2**31:
            raise ProxytasksError(f"{n} faces exceed the 2**31 pair index limit")
        cols._memo = {}
        try:
            i, j, rule, conflicts = write_rules(self.rules, self.policy, cols, n, _disjoint)
        finally:
            cols._memo = None
        if isinstance(manifest, Manifest):
            i, j, rule = _without_low_quality(manifest, i, j, rule)
        infos = [RuleInfo(r.name, r.label, r.weight) for r in self.rules]
        return PairSet(i, j, rule, infos, n_faces=n, face_ids=face_ids, conflicts=conflicts,
                       policy=self.policy)
