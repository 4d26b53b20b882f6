"""PairSet: rule-made same/different pairs stored compactly, as index tuples, in batches.

Each stored row is one pair from one rule: ``i`` and ``j`` (int32 face indices into
the manifest, ``i < j``) and ``rule`` (uint8 index into ``rules``), 9 bytes a pair. A
pair found by two rules of the same label is stored once per rule, so the audit can
count every rule; :meth:`PairSet.unique` collapses them for training. Saved as ``.npz``
with the rule table and a digest of the manifest's face ids, so pairs are never used
with another manifest by mistake.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from .errors import ProxytasksError
from .fileio import atomic_write

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
HUMAN_SAME, HUMAN_DIFFERENT = "human-same", "human-different"  # answers a person gave
HUMAN_WEIGHT = 2.0  # heavier than any rule: a person's answer wins over a rule's pair


@dataclass(frozen=True)
class RuleInfo:
    """What a stored rule index means."""

    name: str
    label: str  # "same" or "different"
    weight: float


def ids_digest(face_ids: Sequence[str] | None) -> str | None:
    """A short digest of the face ids in order (None when ids are unknown)."""
    if face_ids is None:
        return None
    h = hashlib.sha1()
    for fid in face_ids:
        h.update(fid.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()[:16]


class PairSet:
    """Rows of (i, j, rule) plus the rule table and the manifest they index."""

    def __init__(self, i: np.ndarray, j: np.ndarray, rule: np.ndarray, rules: Sequence[RuleInfo],
                 n_faces: int, face_ids: Sequence[str] | None = None, conflicts: int = 0,
                 policy: str = "different", digest: str | None = None) -> None:
        self.i = np.ascontiguousarray(i, dtype=np.int32)
        self.j = np.ascontiguousarray(j, dtype=np.int32)
        self.rule = np.ascontiguousarray(rule, dtype=np.uint8)
        self.rules = list(rules)
        self.n_faces = int(n_faces)
        self.digest = digest if digest is not None else ids_digest(face_ids)
        self.conflicts = int(conflicts)
        self.policy = policy

    def __len__(self) -> int:
        return len(self.i)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored rows."""
        return self.i.nbytes + self.j.nbytes + self.rule.nbytes

    # ------------------------------------------------------------ per-row views
    def labels(self) -> np.ndarray:
        """1 for "same", 0 for "different", per row."""
        return np.array([r.label == "same" for r in self.rules], dtype=np.int8)[self.rule]

    def weights(self) -> np.ndarray:
        """The rule weight of each row."""
        return np.array([r.weight for r in self.rules], dtype=np.float32)[self.rule]

    def counts(self) -> dict[str, int]:
        """Rows per rule name."""
        n = np.bincount(self.rule, minlength=len(self.rules))
        return {r.name: int(c) for r, c in zip(self.rules, n)}

    def select(self, rule: str) -> "PairSet":
        """The rows of one rule."""
        names = [r.name for r in self.rules]
        if rule not in names:
            raise ProxytasksError(f"no rule {rule!r} in these pairs; they hold {', '.join(names)}")
        keep = self.rule == names.index(rule)
        return self._subset(keep)

    def _subset(self, keep: np.ndarray) -> "PairSet":
        return PairSet(self.i[keep], self.j[keep], self.rule[keep], self.rules, self.n_faces,
                       conflicts=self.conflicts, policy=self.policy, digest=self.digest)

    def restrict(self, faces: np.ndarray, face_ids: Sequence[str] | None = None) -> "PairSet":
        """The pairs between two of ``faces`` (distinct face indices), indexing positions
        in ``faces``: the pairs of the sub-manifest of those faces (whose ids are ``face_ids``)."""
        faces = np.asarray(faces, dtype=np.int64).reshape(-1)
        pos = np.full(self.n_faces, -1, dtype=np.int64)
        pos[faces] = np.arange(len(faces))
        keep = (pos[self.i] >= 0) & (pos[self.j] >= 0)
        return PairSet(pos[self.i[keep]], pos[self.j[keep]], self.rule[keep], self.rules, len(faces),
                       face_ids=face_ids, conflicts=self.conflicts, policy=self.policy)

    def with_human(self, same: np.ndarray, different: np.ndarray) -> "PairSet":
        """These pairs plus a person's answers, face pairs (M, 2) each, as the rules
        ``human-same`` and ``human-different`` (weight :data:`HUMAN_WEIGHT`, so in
        :meth:`unique` a person's answer wins over a rule's pair of the other label).
        Earlier human rows are replaced."""
        keep_rules = [r for r in self.rules if r.name not in (HUMAN_SAME, HUMAN_DIFFERENT)]
        remap = np.full(max(len(self.rules), 1), -1, dtype=np.int64)
        for k, r in enumerate(self.rules):
            if r in keep_rules:
                remap[k] = keep_rules.index(r)
        keep = remap[self.rule] >= 0
        rules = keep_rules + [RuleInfo(HUMAN_SAME, "same", HUMAN_WEIGHT),
                              RuleInfo(HUMAN_DIFFERENT, "different", HUMAN_WEIGHT)]
        if len(rules) > 255:
            raise ProxytasksError("too many rules for one pairs file (255 at most)")
        parts = [np.stack([self.i[keep], self.j[keep]], 1).astype(np.int64)]
        codes = [remap[self.rule[keep]]]
        for k, extra in ((len(keep_rules), same), (len(keep_rules) + 1, different)):
            extra = np.sort(np.asarray(extra, dtype=np.int64).reshape(-1, 2), axis=1)
            extra = extra[extra[:, 0] != extra[:, 1]]
            if len(extra) and (extra.min() < 0 or extra.max() >= self.n_faces):
                raise ValueError(f"human pair index out of range 0..{self.n_faces - 1}")
            parts.append(np.unique(extra, axis=0))
            codes.append(np.full(len(parts[-1]), k, dtype=np.int64))
        ij = np.concatenate(parts)
        return PairSet(ij[:, 0], ij[:, 1], np.concatenate(codes), rules, self.n_faces,
                       conflicts=self.conflicts, policy=self.policy, digest=self.digest)

    # ------------------------------------------------------------ training views
    def unique(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """One row per distinct pair: (i, j, label, weight), weight the largest of its rules."""
        key = self.i.astype(np.int64) * max(self.n_faces, 1) + self.j
        w = self.weights()
        order = np.lexsort((-w, key))  # by key, heaviest rule first
        first = np.r_[True, key[order][1:] != key[order][:-1]] if len(key) else np.zeros(0, bool)
        rows = order[first]
        return self.i[rows], self.j[rows], self.labels()[rows], w[rows]

    def indices_tuple(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(a1, p, a2, n)``: positive pairs (a1[k], p[k]) and negative pairs (a2[k], n[k]),
        the form pair losses accept (as in pytorch-metric-learning)."""
        i, j, label, _ = self.unique()
        same = label == 1
        return (i[same].astype(np.int64), j[same].astype(np.int64),
                i[~same].astype(np.int64), j[~same].astype(np.int64))

    def sample_batches(self, batch_size: int, n_batches: int, seed: int = 0,
                       same_fraction: float = 0.5) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Balanced batches of distinct pairs: ``same_fraction`` of each batch are "same".

        Yields ``(i, j, label)`` arrays. Each class is drawn without replacement until it
        runs out, then reshuffled (an epoch per class), so the rarer class repeats.
        """
        i, j, label, _ = self.unique()
        pools = [np.flatnonzero(label == 1), np.flatnonzero(label == 0)]
        n_same = int(round(batch_size * same_fraction)) if len(pools[0]) else 0
        if not len(pools[1]):
            n_same = batch_size
        if n_same and not len(pools[0]) or batch_size - n_same and not len(pools[1]):
            raise ProxytasksError("cannot draw pairs: these pairs hold no rows of a needed label")
        rng = np.random.default_rng(seed)
        streams = [_cycle(pool, rng) for pool in pools]
        for _ in range(n_batches):
            rows = np.concatenate([streams[0](n_same), streams[1](batch_size - n_same)])
            yield i[rows], j[rows], label[rows]

    # ------------------------------------------------------------ storage
    def save(self, path: str | os.PathLike) -> Path:
        """Write ``.npz`` atomically (the rule table and digest in a JSON field)."""
        path = Path(path)
        meta = {"format_version": FORMAT_VERSION, "rules": [asdict(r) for r in self.rules],
                "n_faces": self.n_faces, "digest": self.digest, "conflicts": self.conflicts,
                "policy": self.policy}
        with atomic_write(path, "wb", gz=False) as fh:
            np.savez(fh, i=self.i, j=self.j, rule=self.rule, meta=np.array(json.dumps(meta)))
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, face_ids: Sequence[str] | None = None) -> "PairSet":
        """Read pairs; with ``face_ids`` check they were made from that manifest."""
        path = Path(path)
        if not path.is_file():
            raise ProxytasksError(f"{path}: pairs file not found")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                arrays = {k: z[k] for k in ("i", "j", "rule")}
            if not isinstance(meta, dict):
                raise ValueError("its header is not a JSON object")
        except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
            raise ProxytasksError(f"{path}: not a proxytasks pairs file ({e})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            raise ProxytasksError(f"{path}: pairs format {meta.get('format_version')} is not "
                                  f"{FORMAT_VERSION}; rebuild them with `proxytasks pairs`")
        pairs = cls(arrays["i"], arrays["j"], arrays["rule"], [RuleInfo(**r) for r in meta["rules"]],
                    meta["n_faces"], conflicts=meta["conflicts"], policy=meta["policy"],
                    digest=meta["digest"])
        if face_ids is not None:
            if len(face_ids) != pairs.n_faces or (pairs.digest and ids_digest(face_ids) != pairs.digest):
                raise ProxytasksError(
                    f"{path}: these pairs were made from another manifest ({pairs.n_faces} faces, "
                    f"digest {pairs.digest}) than the one given ({len(face_ids)} faces, digest "
                    f"{ids_digest(face_ids)}); rebuild them with `proxytasks pairs`")
        if len(pairs) and (pairs.i.min() < 0 or pairs.j.max() >= pairs.n_faces
                           or pairs.rule.max() >= len(pairs.rules)):
            raise ProxytasksError(f"{path}: pair indices out of range; the file is damaged")
        return pairs


def _cycle(pool: np.ndarray, rng: np.random.Generator):
    """A function drawing ``k`` items at a time from ``pool``, reshuffled when used up."""
    state = {"perm": rng.permutation(pool), "pos": 0}

    def draw(k: int) -> np.ndarray:
        out = []
        while k > 0:
            if state["pos"] >= len(state["perm"]):
                state["perm"], state["pos"] = rng.permutation(pool), 0
            take = state["perm"][state["pos"]:state["pos"] + k]
            state["pos"] += len(take)
            k -= len(take)
            out.append(take)
        return np.concatenate(out) if out else np.zeros(0, dtype=pool.dtype)

    return draw
