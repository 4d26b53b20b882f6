"""Cheap-label rules: turn frame and track structure into same/different pairs.

A rule is a small class with a ``name``, a ``label`` ("same" or "different"), a
``weight`` and ``pairs(columns) -> (n, 2) int array`` of face indices with ``i < j``.
Rules read only where faces come from (media, frame, track), never ``identity``.
The built-in rules also give ``rows(columns)``, their pairs counted before they are
written (so that :class:`RuleSet` writes every rule straight into the final int32
arrays), and ``contains(columns, i, j)``, a per-row test of whether pairs ``(i, j)``
are among the rule's pairs (so that conflicts are found without sorting all pairs).
A rule without them still works: its pairs are copied and compared by sorting.

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
from collections import defaultdict
from dataclasses import dataclass, field
from itertools import count
from operator import attrgetter
from typing import Callable, ClassVar, Sequence

import numpy as np

from .errors import ProxytasksError
from .manifest import Manifest
from .pairs import PairSet, RuleInfo
from .registry import Registry

logger = logging.getLogger(__name__)

RULES: Registry[type["Rule"]] = Registry("rule")
DEFAULT_RULES = ("same-frame", "same-track", "track-cooccurrence", "same-photo")
POLICIES = ("different", "drop")
BLOCK = 1 << 20  # rows per block of the blockwise loops (temporaries stay in cache)


def _first_codes(values: Sequence, n: int) -> tuple[np.ndarray, list]:
    """Integer code per value, numbered by first occurrence, and the code table."""
    table: defaultdict = defaultdict(count().__next__)
    codes = np.fromiter(map(table.__getitem__, values), np.int64, n)
    return codes, list(table)


def _sorted_unique(x: np.ndarray) -> np.ndarray:
    """``np.unique(x)`` of a 1-D array by sorting (numpy 2.4's hash-based ``np.unique``
    of integers is far slower and takes tens of bytes a key)."""
    s = np.sort(x)
    return s[np.r_[True, s[1:] != s[:-1]]] if len(s) else s


def _member(x: np.ndarray, sorted_keys: np.ndarray) -> np.ndarray:
    """Whether each of ``x`` is in ``sorted_keys`` (ascending, distinct)."""
    if not len(sorted_keys):
        return np.zeros(len(x), dtype=bool)
    pos = np.minimum(np.searchsorted(sorted_keys, x), len(sorted_keys) - 1)
    return sorted_keys[pos] == x


@dataclass
class FaceColumns:
    """The columns rules read, as integer codes (-1 = absent)."""

    media: np.ndarray
    frame: np.ndarray
    track: np.ndarray
    # results derived from the columns, kept only while a RuleSet applies its rules
    _memo: dict | None = field(default=None, init=False, repr=False, compare=False)

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> "FaceColumns":
        """Codes for media, frame (-1 for photos) and track (scoped by media), numbered
        by first occurrence; one pass over the faces per column, at C speed."""
        faces, n = manifest.faces, len(manifest.faces)
        media, _ = _first_codes(map(attrgetter("media"), faces), n)
        try:
            frame = np.fromiter(map(attrgetter("frame"), faces), np.int64, n)
        except TypeError:  # photos: frame None
            frame = np.fromiter(map(attrgetter("frame"), faces), object, n)
            frame[frame == None] = -1  # noqa: E711 (elementwise)
            frame = frame.astype(np.int64)
        names, table = _first_codes(map(attrgetter("track"), faces), n)
        if None in table:  # untracked faces: -1, and the codes after None's one down
            none = table.index(None)
            tracked = names != none
            names = np.where(tracked, names - (names > none), -1)
        else:
            tracked = np.ones(n, dtype=bool)
        # a track is (media, name): the names are the tracks when each name is in one media
        first = np.flatnonzero(tracked & (names > np.maximum.accumulate(np.r_[-1, names[:-1]])))
        if (media[first][names[tracked]] == media[tracked]).all():
            track = names
        else:
            key = media[tracked] * (len(first) + 1) + names[tracked]
            _, first_at, inverse = np.unique(key, return_index=True, return_inverse=True)
            rank = np.empty(len(first_at), dtype=np.int64)
            rank[np.argsort(first_at, kind="stable")] = np.arange(len(first_at))
            track = np.full(n, -1, dtype=np.int64)
            track[tracked] = rank[inverse.reshape(-1)]
        return cls(media=media, frame=frame, track=track)

    def __len__(self) -> int:
        return len(self.media)

    def _cached(self, key: str, make: Callable):
        memo = self.__dict__.get("_memo")
        if memo is None:
            return make()
        if key not in memo:
            memo[key] = make()
        return memo[key]

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
    """Faces with ``key >= 0`` sorted by key: (order, group starts, group sizes).
    Inside a group the faces are ascending (a stable sort of ascending indices)."""
    idx = np.flatnonzero(keys >= 0)
    order = idx[np.argsort(keys[idx], kind="stable")]
    k = keys[order]
    starts = np.flatnonzero(np.r_[True, k[1:] != k[:-1]]) if len(k) else np.zeros(0, np.int64)
    sizes = np.diff(np.r_[starts, len(k)])
    return order, starts, sizes


class PairRows:
    """The rows of a rule, counted before they are written: ``n``, then ``fill(i, j)``
    writes them (face indices, ``i < j``) into two contiguous int32 arrays of length ``n``."""

    def __init__(self, n: int, fill: Callable[[np.ndarray, np.ndarray], None] | None = None) -> None:
        self.n = int(n)
        self._fill = fill

    def fill(self, i: np.ndarray, j: np.ndarray) -> None:
        if len(i) != self.n or len(j) != self.n:
            raise ValueError(f"fill needs arrays of {self.n} rows, got {len(i)} and {len(j)}")
        if self.n and self._fill is not None:
            self._fill(i, j)

    def array(self) -> np.ndarray:
        """The rows as one (n, 2) int32 array."""
        i, j = np.empty(self.n, np.int32), np.empty(self.n, np.int32)
        self.fill(i, j)
        return np.stack([i, j], axis=1)

    @classmethod
    def of(cls, pairs: np.ndarray) -> "PairRows":
        """Ready-made (n, 2) pairs."""
        pairs = np.asarray(pairs).reshape(-1, 2)

        def fill(i: np.ndarray, j: np.ndarray) -> None:
            i[:], j[:] = pairs[:, 0], pairs[:, 1]
        return cls(len(pairs), fill)


def rows_within_groups(keys: np.ndarray) -> PairRows:
    """Every pair of faces that share a key (``key < 0`` means no group), ``i < j``: groups
    by ascending size, then by key; each group's pairs as ``np.triu_indices`` orders them."""
    order, starts, sizes = _groups(keys)
    big = np.flatnonzero(sizes >= 2)
    if not len(big):
        return PairRows(0)
    big = big[np.argsort(sizes[big], kind="stable")]  # by size, then by key
    size_of, start_of = sizes[big], starts[big]
    cuts = np.r_[np.flatnonzero(np.r_[True, size_of[1:] != size_of[:-1]]), len(big)]
    members_of = order.astype(np.int32)

    def fill(i: np.ndarray, j: np.ndarray) -> None:
        off = 0
        for lo, hi in zip(cuts[:-1].tolist(), cuts[1:].tolist()):
            size = int(size_of[lo])
            # faces ascend inside a group, so a < b gives i < j without sorting each row
            if size > 1024:  # large groups row by row: no triu_indices of size**2 / 2
                for start in start_of[lo:hi].tolist():
                    members = members_of[start:start + size]
                    for a in range(size - 1):
                        i[off:off + size - 1 - a] = members[a]
                        j[off:off + size - 1 - a] = members[a + 1:]
                        off += size - 1 - a
                continue
            members = members_of[start_of[lo:hi, None] + np.arange(size)]
            a, b = np.triu_indices(size, 1)
            end = off + (hi - lo) * len(a)
            np.take(members, a, axis=1, out=i[off:end].reshape(hi - lo, len(a)), mode="clip")
            np.take(members, b, axis=1, out=j[off:end].reshape(hi - lo, len(b)), mode="clip")
            off = end
    return PairRows(int((size_of * (size_of - 1) // 2).sum()), fill)


def rows_across_groups(keys: np.ndarray, group_pairs: np.ndarray) -> PairRows:
    """Every (face of group a, face of group b) for each row (a, b) of ``group_pairs``, as
    ``(min, max)``: pair by pair, a's faces ascending, each with b's faces ascending."""
    order, starts, sizes = _groups(keys)
    group_pairs = np.asarray(group_pairs, dtype=np.int64).reshape(-1, 2)
    if not len(starts) or not len(group_pairs):
        return PairRows(0)
    group_key = keys[order[starts]]  # the key of each group, ascending
    ga, gb = (np.minimum(np.searchsorted(group_key, group_pairs[:, c]), len(starts) - 1) for c in (0, 1))
    known = (group_key[ga] == group_pairs[:, 0]) & (group_key[gb] == group_pairs[:, 1])
    ga, gb = ga[known], gb[known]
    na, nb = sizes[ga], sizes[gb]
    total = int((na * nb).sum())
    if total == 0:
        return PairRows(0)
    members = order.astype(np.int32)
    # one row per (pair, face of a): that face, then the nb faces of b from start_b
    row_face = members[np.repeat(starts[ga] - (np.cumsum(na) - na), na) + np.arange(int(na.sum()))]
    row_len = np.repeat(nb, na)
    row_b = np.repeat(starts[gb], na)
    row_end = np.cumsum(row_len)
    row_off = row_end - row_len
    # the faces of a all below (1) or all above (-1) those of b: no min/max needed
    side = np.where(members[starts[ga] + na - 1] < members[starts[gb]], 1,
                    np.where(members[starts[ga]] > members[starts[gb] + nb - 1], -1, 0))
    row_side = np.repeat(side, na)
    cuts = np.r_[0, np.searchsorted(row_end, np.arange(BLOCK, total, BLOCK), side="left") + 1, len(row_end)]
    cuts = np.minimum(cuts, len(row_end))
    cuts = cuts[np.r_[True, cuts[1:] != cuts[:-1]]]
    longest = int((row_end[cuts[1:] - 1] - row_off[cuts[:-1]]).max())
    cuts = cuts.tolist()

    def fill(i: np.ndarray, j: np.ndarray) -> None:
        ramp = np.arange(longest, dtype=np.int64)
        for r0, r1 in zip(cuts[:-1], cuts[1:]):
            o0, o1 = int(row_off[r0]), int(row_end[r1 - 1])
            lens = row_len[r0:r1]
            first = np.repeat(row_face[r0:r1], lens)
            idx = np.repeat(row_b[r0:r1] - (row_off[r0:r1] - o0), lens)
            idx += ramp[:o1 - o0]
            s = row_side[r0:r1]
            if (s == 1).all():
                i[o0:o1] = first
                np.take(members, idx, out=j[o0:o1], mode="clip")
            elif (s == -1).all():
                j[o0:o1] = first
                np.take(members, idx, out=i[o0:o1], mode="clip")
            else:
                second = np.take(members, idx, mode="clip")
                np.minimum(first, second, out=i[o0:o1])
                np.maximum(first, second, out=j[o0:o1])
    return PairRows(total, fill)


def pairs_within_groups(keys: np.ndarray) -> np.ndarray:
    """Every pair of faces that share a key (``key < 0`` means no group), ``i < j``;
    (n, 2) int32."""
    return rows_within_groups(keys).array()


def pairs_across_groups(keys: np.ndarray, group_pairs: np.ndarray) -> np.ndarray:
    """Every (face of group a, face of group b) for each row (a, b) of ``group_pairs``,
    ``i < j``; (n, 2) int32."""
    return rows_across_groups(keys, group_pairs).array()


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


def _frame_key(cols: FaceColumns) -> np.ndarray:
    return cols._cached("frame_key", cols.frame_key)


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


def _pair_keys(i: np.ndarray, j: np.ndarray, n: int) -> np.ndarray:
    return i.astype(np.int64) * n + j


def _hits(i: np.ndarray, j: np.ndarray, tests: list[Callable]) -> np.ndarray:
    """OR of the per-row tests ``test(i, j) -> bool array``, block by block."""
    hit = np.zeros(len(i), dtype=bool)
    for b0 in range(0, len(i), BLOCK):
        part = hit[b0:b0 + BLOCK]
        for test in tests:
            part |= test(i[b0:b0 + BLOCK], j[b0:b0 + BLOCK])
    return hit


def _compact(arrays: Sequence[np.ndarray], start: int, stop: int, keep: np.ndarray) -> int:
    """Move the rows ``start:stop`` of ``arrays`` where ``keep`` down in place, in order,
    block by block; returns the new stop."""
    dropped = np.flatnonzero(~keep)
    if not len(dropped):
        return stop
    w = start + int(dropped[0])
    for b0 in range(int(dropped[0]), len(keep), BLOCK):
        k = keep[b0:b0 + BLOCK]
        src, m = start + b0, int(np.count_nonzero(k))
        for a in arrays:
            a[w:w + m] = a[src:src + len(k)][k]
        w += m
    return w


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
            i, j, rule, conflicts = self._pairs(cols, n)
        finally:
            cols._memo = None
        if isinstance(manifest, Manifest):
            i, j, rule = _without_low_quality(manifest, i, j, rule)
        infos = [RuleInfo(r.name, r.label, r.weight) for r in self.rules]
        return PairSet(i, j, rule, infos, n_faces=n, face_ids=face_ids, conflicts=conflicts,
                       policy=self.policy)

    def _pairs(self, cols: FaceColumns, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """Count every rule's rows, find the conflicting pairs, then write the rows straight
        into the final int32 ``i``, ``j`` and uint8 ``rule`` arrays, rule by rule, each
        rule's dropped rows removed in place before the next rule is written."""
        rows = []
        for rule in self.rules:
            rows.append(rule.rows(cols))
            logger.info("rule %s: %d pairs", rule.name, rows[-1].n)
        ready: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # rows written ahead, by rule
        conflicting = self._conflicts(cols, n, rows, ready)
        marked = np.zeros(n, dtype=bool)
        marked[conflicting // max(n, 1)] = True
        marked[conflicting % max(n, 1)] = True
        total = sum(r.n for r in rows)
        i, j = np.empty(total, np.int32), np.empty(total, np.int32)
        code = np.empty(total, np.uint8)
        w = 0
        for k, (rule, r) in enumerate(zip(self.rules, rows)):
            end = w + r.n
            if k in ready:
                i[w:end], j[w:end] = ready.pop(k)
            else:
                r.fill(i[w:end], j[w:end])
            code[w:end] = k
            if len(conflicting) and r.n and (rule.label == "same" or self.policy == "drop") \
                    and self._may_hold(cols, rule, conflicting, n):
                keep = np.ones(r.n, dtype=bool)
                for b0 in range(w, end, BLOCK):
                    b1 = min(b0 + BLOCK, end)
                    maybe = np.flatnonzero(marked[i[b0:b1]] & marked[j[b0:b1]])
                    if len(maybe):
                        keys = _pair_keys(i[b0:b1][maybe], j[b0:b1][maybe], n)
                        keep[b0 - w + maybe[_member(keys, conflicting)]] = False
                end = _compact((i, j, code), w, end, keep)
            w = end
        if w < total:
            i, j, code = i[:w], j[:w], code[:w]
            if total - w > total // 4:  # give the unused tail back
                i, j, code = i.copy(), j.copy(), code.copy()
        return i, j, code, int(len(conflicting))

    def _conflicts(self, cols: FaceColumns, n: int, rows: list[PairRows],
                   ready: dict[int, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """The distinct pairs that a "same" and a "different" rule both give, as sorted keys
        ``i * n + j``. For each such two rules the rows of the smaller are tested against
        the other's :meth:`Rule.contains` (a gather and a compare per row: no sort of all
        pairs); a rule without ``contains`` is compared by its sorted keys. The rows made
        for a test are kept in ``ready`` for the output."""
        def materialized(k: int) -> tuple[np.ndarray, np.ndarray]:
            if k not in ready:
                ready[k] = (np.empty(rows[k].n, np.int32), np.empty(rows[k].n, np.int32))
                rows[k].fill(*ready[k])
            return ready[k]

        sorted_keys: dict[int, np.ndarray] = {}

        def test(k: int) -> Callable:
            rule = self.rules[k]
            if rule.has_contains():
                return lambda i, j: rule.contains(cols, i, j)
            if k not in sorted_keys:
                sorted_keys[k] = _sorted_unique(_pair_keys(*materialized(k), n))
            return lambda i, j, keys=sorted_keys[k]: _member(_pair_keys(i, j, n), keys)

        parts = []
        same = [k for k, r in enumerate(self.rules) if r.label == "same" and rows[k].n]
        different = [k for k, r in enumerate(self.rules) if r.label != "same" and rows[k].n]
        for s in same:
            for d in different:
                if _disjoint(self.rules[s], self.rules[d]):
                    continue
                a, b = self.rules[s].has_contains(), self.rules[d].has_contains()
                # go through the rows of x, testing them against y: x the smaller rule (the
                # larger when neither has contains: the smaller one's keys are sorted), or
                # the one without contains
                x, y = (s, d) if (rows[s].n <= rows[d].n) == (a or b) else (d, s)
                if a != b:
                    x, y = (d, s) if a else (s, d)
                xi, xj = materialized(x)
                hit = _hits(xi, xj, [test(y)])
                parts.append(_pair_keys(xi[hit], xj[hit], n))
        return _sorted_unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def _may_hold(self, cols: FaceColumns, rule: Rule, conflicting: np.ndarray, n: int) -> bool:
        """Whether some of the ``conflicting`` pairs may be among the rule's rows."""
        if not rule.has_contains():
            return True
        return bool(rule.contains(cols, conflicting // n, conflicting % n).any())
