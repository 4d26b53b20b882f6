"""The pair-writing engine behind :class:`proxytasks.rules.RuleSet`: counts every rule's
rows, finds the pairs that a "same" and a "different" rule both give, and writes the
rows straight into the final int32 ``i``, ``j`` and uint8 ``rule`` arrays, block by block.

It holds the group helpers rules are written with (:func:`rows_within_groups`,
:func:`rows_across_groups` and :class:`PairRows`, rows counted before they are written)
and :func:`write_rules`; the rules themselves live in :mod:`proxytasks.rules`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np

if TYPE_CHECKING:
    from .manifest import FaceColumns

logger = logging.getLogger(__name__)

BLOCK = 1 << 20  # rows per block of the blockwise loops (temporaries stay in cache)


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


def write_rules(rules: Sequence[Any], policy: str, cols: "FaceColumns", n: int,
                disjoint: Callable[[Any, Any], bool] = lambda a, b: False
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """The rows of ``rules`` (each with ``name``, ``label``, ``rows(cols)``,
    ``has_contains()`` and, when it has it, ``contains(cols, i, j)``) over ``n`` faces,
    conflicts resolved by ``policy`` ("different" or "drop"); ``disjoint(a, b)`` says two
    rules never give a common pair. Returns ``(i, j, rule, conflicts)``.

    Count every rule's rows, find the conflicting pairs, then write the rows straight
    into the final int32 ``i``, ``j`` and uint8 ``rule`` arrays, rule by rule, each
    rule's dropped rows removed in place before the next rule is written."""
    rows = []
    for rule in rules:
        rows.append(rule.rows(cols))
        logger.info("rule %s: %d pairs", rule.name, rows[-1].n)
    ready: dict[int, tuple[np.ndarray, np.ndarray]] = {}  # rows written ahead, by rule
    conflicting = _conflicts(rules, disjoint, cols, n, rows, ready)
    marked = np.zeros(n, dtype=bool)
    marked[conflicting // max(n, 1)] = True
    marked[conflicting % max(n, 1)] = True
    total = sum(r.n for r in rows)
    i, j = np.empty(total, np.int32), np.empty(total, np.int32)
    code = np.empty(total, np.uint8)
    w = 0
    for k, (rule, r) in enumerate(zip(rules, rows)):
        end = w + r.n
        if k in ready:
            i[w:end], j[w:end] = ready.pop(k)
        else:
            r.fill(i[w:end], j[w:end])
        code[w:end] = k
        if len(conflicting) and r.n and (rule.label == "same" or policy == "drop") \
                and _may_hold(cols, rule, conflicting, n):
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


def _conflicts(rules: Sequence[Any], disjoint: Callable, cols: "FaceColumns", n: int, rows: list[PairRows],
               ready: dict[int, tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """The distinct pairs that a "same" and a "different" rule both give, as sorted keys
    ``i * n + j``. For each such two rules the rows of the smaller are tested against
    the other's ``contains`` (a gather and a compare per row: no sort of all
    pairs); a rule without ``contains`` is compared by its sorted keys. The rows made
    for a test are kept in ``ready`` for the output."""
    def materialized(k: int) -> tuple[np.ndarray, np.ndarray]:
        if k not in ready:
            ready[k] = (np.empty(rows[k].n, np.int32), np.empty(rows[k].n, np.int32))
            rows[k].fill(*ready[k])
        return ready[k]

    sorted_keys: dict[int, np.ndarray] = {}

    def test(k: int) -> Callable:
        rule = rules[k]
        if rule.has_contains():
            return lambda i, j: rule.contains(cols, i, j)
        if k not in sorted_keys:
            sorted_keys[k] = _sorted_unique(_pair_keys(*materialized(k), n))
        return lambda i, j, keys=sorted_keys[k]: _member(_pair_keys(i, j, n), keys)

    parts = []
    same = [k for k, r in enumerate(rules) if r.label == "same" and rows[k].n]
    different = [k for k, r in enumerate(rules) if r.label != "same" and rows[k].n]
    for s in same:
        for d in different:
            if disjoint(rules[s], rules[d]):
                continue
            a, b = rules[s].has_contains(), rules[d].has_contains()
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


def _may_hold(cols: "FaceColumns", rule: Any, conflicting: np.ndarray, n: int) -> bool:
    """Whether some of the ``conflicting`` pairs may be among the rule's rows."""
    if not rule.has_contains():
        return True
    return bool(rule.contains(cols, conflicting // n, conflicting % n).any())
