"""Measuring a compute-budget sweep's configurations on this device (:mod:`proxytasks.budget`).

The split of the faces into training scenes and held-out test faces (:func:`scenes_order`,
:func:`first_scenes`), the trunk outputs computed once per backbone, view and face and
shared by every configuration, the probe of a backbone's costs, the cost predictions that
follow the machine, and the training and evaluation of one configuration (:class:`Sweep`):
steps 1, 2 and 4 of the sweep described in :mod:`proxytasks.budget`.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .budget_grid import Candidate, SweepSettings
from .errors import ProxytasksError
from .manifest import Manifest
from .pairs import PairSet
from .vectors import components

logger = logging.getLogger(__name__)

VIEWS = ("plain", "flip")  # views of a training face (two: a photo collection's positive pair)
PROBE_BATCHES = (1, 3)  # the two probe passes end after this many batches of test faces
PROBE_STEPS = 300  # steps of the probe training (one per trunk width), checkpoints every 50


@dataclass
class Cost:
    """Measured costs of one backbone on this device (seconds)."""

    create_s: float = 0.0  # building the model with its weights
    startup_s: float = 0.0  # one trunk pass, besides its faces
    face_s: float = 0.0  # one face, one view
    train_s: float = 0.0  # ``train``'s fixed cost on cached features
    step_s: float = 0.0  # one training step (validation included)
    joint_s: float = 0.0  # the joint fine-tuning's fixed cost
    joint_step_s: float = 0.0  # one joint step


class _Store:
    """Trunk outputs (pooled features or prefix activations) per view and face, each
    computed once, with the time of every pass (faces, seconds) that computed them."""

    def __init__(self, compute: Callable[[np.ndarray, str], np.ndarray], n: int) -> None:
        self.compute, self.n = compute, n
        self.data: dict[str, np.ndarray] = {}
        self.done: dict[str, np.ndarray] = {}
        self.passes: list[tuple[int, float]] = []

    def missing(self, view: str, idx: np.ndarray) -> int:
        done = self.done.get(view)
        return len(idx) if done is None else int((~done[idx]).sum())

    def get(self, view: str, idx: np.ndarray) -> np.ndarray:
        if view not in self.done:
            self.done[view] = np.zeros(self.n, dtype=bool)
        need = idx[~self.done[view][idx]]
        if len(need):
            t0 = time.perf_counter()
            out = self.compute(need, view)
            self.passes.append((len(need), time.perf_counter() - t0))
            if view not in self.data:
                self.data[view] = np.zeros((self.n,) + out.shape[1:], dtype=out.dtype)
            self.data[view][need] = out
            self.done[view][need] = True
        return self.data[view][idx]

    def fit(self, fallback: tuple[float, float] = (0.0, 0.0)) -> tuple[float, float]:
        """(start-up, seconds per face) of one pass, least squares over the passes so far;
        ``fallback`` before any pass (and its start-up while all passes have one size)."""
        if not self.passes:
            return fallback
        n, sec = (np.array(v, dtype=float) for v in zip(*self.passes))
        if len(set(n)) >= 2:
            slope, icept = np.polyfit(n, sec, 1)
            if slope > 0 and icept >= 0:
                return float(icept), float(slope)
            if slope > 0:  # a negative start-up: a line through zero
                return 0.0, float((n * sec).sum() / (n * n).sum())
        startup = min(fallback[0], float(sec.min()))
        return startup, float(max((sec - startup).sum() / n.sum(), 1e-6))

    def pass_s(self, faces: int, fallback: tuple[float, float] = (0.0, 0.0)) -> float:
        """Seconds of one pass over ``faces`` faces, at :meth:`fit`."""
        startup, face = self.fit(fallback)
        return startup + faces * face if faces else 0.0


def scenes_order(pairs: PairSet, train: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The faces of ``train`` (a mask) scene by scene (connected components of the pairs
    among them), scenes in seeded random order; and where each scene starts in that order."""
    i, j, _, _ = pairs.unique()
    keep = train[i] & train[j]
    comp = components(pairs.n_faces, i[keep], j[keep])
    faces = np.flatnonzero(train)
    rank = np.random.default_rng(seed).permutation(comp.max() + 1)[comp[faces]]
    order = np.lexsort((faces, rank))
    return faces[order], np.flatnonzero(np.r_[True, np.diff(rank[order]) != 0])


def first_scenes(order: np.ndarray, starts: np.ndarray, fraction: float) -> np.ndarray:
    """The faces (sorted) of the fewest first scenes of ``order`` that hold ``fraction`` of it."""
    ends = np.r_[starts[1:], len(order)]
    k = ends[min(np.searchsorted(ends, fraction * len(order) - 1e-9), len(ends) - 1)]
    return np.sort(order[:k])


class Sweep:
    """The state of one sweep: the split, the shared trunk outputs, the runs, the results."""

    def __init__(self, manifest: Manifest, pairs: PairSet, work: Path, s: SweepSettings) -> None:
        from .benchmark import identities
        from .models import select_device
        from .train import holdout_mask, pairs_within

        self.m, self.pairs, self.work, self.s = manifest, pairs, work, s
        self.device = str(select_device(s.device))
        test = holdout_mask(manifest, s.test_share, s.seed + 1)
        if test.all() or not test.any():
            raise ProxytasksError(f"{len(manifest)} faces cannot be split into training and test faces; "
                                  "a budget sweep needs more faces (several time chunks or photos)")
        self.test = np.flatnonzero(test)
        self.order, self.starts = scenes_order(pairs, ~test, s.seed)
        self.identity = identities(manifest)[self.test]
        self.test_pos, self.test_neg = pairs_within(pairs.restrict(self.test), np.ones(len(self.test), bool))
        self.named = self._naming_possible()
        self.error_name = (f"1 - naming accuracy at {s.shots} name(s) per person on {len(self.test)} held-out "
                           f"faces, each face named by the naming head alone (mean of {s.repeats} seeded draws)"
                           if self.named else
                           f"1 - ROC-AUC of held-out must-link vs cannot-link pairs ({len(self.test_pos)} + "
                           f"{len(self.test_neg)}) on {len(self.test)} held-out faces")
        if not self.named and (not len(self.test_pos) or not len(self.test_neg)):
            raise ProxytasksError("the held-out faces have neither identities (for naming accuracy) nor both "
                                  "must-link and cannot-link pairs (for ROC-AUC): nothing to measure the error on")
        self.costs: dict[str, Cost] = {}
        self.embedders: dict[str, Any] = {}
        self.stores: dict[str, _Store] = {}
        self.prefixes: dict[str, _Store] = {}
        self.runs: dict[Candidate, tuple[Path, dict[str, Any]]] = {}
        self.results: dict[Candidate, dict[str, Any]] = {}
        self.eval_s = 1.0  # running estimate of one evaluation's seconds
        self.slowdown: dict[str, list[float]] = {"train": [], "joint": []}  # measured / probed seconds
        self.train_probe: dict[int, tuple[float, float]] = {}  # trunk width -> (fixed s, s per step)

    def _naming_possible(self) -> bool:
        from .metrics import few_shot_draw

        known = self.identity != ""
        return len(set(self.identity[known][few_shot_draw(self.identity[known], self.s.shots, 0)])) >= 2

    def train_faces(self, fraction: float) -> np.ndarray:
        """The training faces of the first scenes that hold ``fraction`` of them (sorted)."""
        return first_scenes(self.order, self.starts, fraction)

    def _sub(self, idx: np.ndarray) -> Manifest:
        return Manifest([self.m.faces[i] for i in idx], self.m.root)

    # ------------------------------------------------------------------ probing
    def probe(self, backbone: str, strategies: Sequence[str]) -> Cost:
        """Measure ``backbone``'s costs on this device (see the module docstring)."""
        from .embed import trunk_features
        from .embedder import create_embedder

        s, cost = self.s, Cost()
        t0 = time.perf_counter()
        emb = create_embedder(backbone, input_size=128)
        cost.create_s = time.perf_counter() - t0
        self.embedders[backbone] = emb

        def pooled(idx: np.ndarray, view: str) -> np.ndarray:
            return trunk_features(emb, self._sub(idx), (view,), s.batch_size, s.workers, s.seed, False,
                                  self.device)[0].astype(np.float16)

        store = self.stores[backbone] = _Store(pooled, len(self.m))
        self._probe_passes(store, pooled)
        cost.startup_s, cost.face_s = store.fit()
        cost.train_s, cost.step_s = self._probe_train(backbone, emb.in_dim)
        if "global" in strategies:
            cost.joint_s, cost.joint_step_s = self._probe_joint(backbone)
        self.costs[backbone] = cost
        logger.info("probe %s: %.1f faces/s, train %.2f s + %.1f ms/step, joint %.2f s + %.1f ms/step", backbone,
                    1 / cost.face_s, cost.train_s, 1e3 * cost.step_s, cost.joint_s, 1e3 * cost.joint_step_s)
        return cost

    def _probe_passes(self, store: _Store, compute: Callable[[np.ndarray, str], np.ndarray]) -> None:
        """Two timed passes over test faces, ending after one and after three whole batches
        (the per-face cost of full batches, which every real pass mostly is), after an
        untimed warm-up (first-call costs of the network and its kernels)."""
        compute(self.test[:2], "plain")
        a, b = (min(k * self.s.batch_size, len(self.test)) for k in PROBE_BATCHES)
        store.get("plain", self.test[:a])
        store.get("plain", self.test[a:b])

    def _probe_train(self, backbone: str, in_dim: int) -> tuple[float, float]:
        """``train``'s fixed seconds and seconds per step on stand-in features of this trunk
        width (the head's cost does not depend on the backbone otherwise): the line through
        the times of its checkpoints (every 50 steps) of one run, plus what follows the last."""
        from .train import TrainConfig, train

        if in_dim not in self.train_probe:
            idx = self.train_faces(1.0)
            sub, ps = self._sub(idx), self.pairs.restrict(idx)
            stand_in = np.random.default_rng(0).standard_normal((len(VIEWS), len(idx), in_dim)).astype(np.float32)
            folder = self.work / f"probe_{in_dim}"
            cfg = TrainConfig(backbone=backbone, views=VIEWS, steps=PROBE_STEPS, seed=self.s.seed, device=self.device)
            summary = train(sub, ps, folder, cfg, progress=False, features=stand_in)
            log = [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]
            shutil.rmtree(folder, ignore_errors=True)
            step, start = np.polyfit([r["step"] for r in log], [r["seconds"] for r in log], 1)
            self.train_probe[in_dim] = (max(start, 0.0) + summary["seconds"] - log[-1]["seconds"], max(step, 1e-6))
        return self.train_probe[in_dim]

    def _probe_joint(self, backbone: str) -> tuple[float, float]:
        from .finetune import GlobalConfig, fine_tune_global

        idx = np.r_[self.train_faces(1.0), self.test[:4]]
        n = len(idx)
        store = self._prefix(backbone)
        self._probe_passes(store, store.compute)
        shape = store.get("plain", self.test[:1]).shape[1:]
        stand_in = np.random.default_rng(0).standard_normal((len(VIEWS), n) + shape).astype(np.float16)
        ps = self._joint_pairs(idx, n - 4)
        named = {n - 4 + k: str(k % 2) for k in range(4)}
        times = []
        for steps in (2, 12):
            t0 = time.perf_counter()
            fine_tune_global(self.embedders[backbone], stand_in, ps, named,
                             GlobalConfig(steps=steps, seed=self.s.seed, device=self.device), progress=False)
            times.append(time.perf_counter() - t0)
        step = max((times[1] - times[0]) / 10, 1e-5)
        return max(times[0] - 2 * step, 0.0), step

    def _prefix(self, backbone: str) -> _Store:
        if backbone not in self.prefixes:
            from .finetune import prefix_features

            emb, s = self.embedders[backbone], self.s

            def compute(idx: np.ndarray, view: str) -> np.ndarray:
                return prefix_features(emb, self._sub(idx), (view,), s.batch_size, s.workers, s.seed, False,
                                       self.device)[0]

            self.prefixes[backbone] = _Store(compute, len(self.m))
        return self.prefixes[backbone]

    def _joint_pairs(self, idx: np.ndarray, n_train: int) -> PairSet:
        """Pairs among the first ``n_train`` faces of ``idx``, indexing positions in ``idx``."""
        ps = self.pairs.restrict(idx)
        return ps._subset((ps.i < n_train) & (ps.j < n_train))

    # ------------------------------------------------------------------ costs
    def _passes(self, c: Candidate) -> list[tuple[_Store | None, str, np.ndarray, str]]:
        """The trunk passes ``c`` needs: (store or None before it exists, view, faces, kind)."""
        out = [(self.stores.get(c.backbone), "plain", self.test, "pooled")]
        if c.strategy == "independent":
            return out
        tf = self.train_faces(c.fraction)
        out += [(self.stores.get(c.backbone), v, tf, "pooled") for v in VIEWS]
        if c.strategy == "global":
            store = self.prefixes.get(c.backbone)
            out += [(store, "plain", self.test, "prefix")] + [(store, v, tf, "prefix") for v in VIEWS]
        return out

    def observe(self, kind: str, measured: float, probed: float) -> None:
        """Record how long a training or joint fine-tuning (``kind``) took against its probed cost."""
        if probed > 0:
            self.slowdown[kind].append(measured / probed)

    def factor(self, kind: str) -> float:
        """How much slower than its probe ``kind`` runs now: the median of the last three
        measured / probed ratios (1 before any), so that predictions follow the machine."""
        seen = self.slowdown[kind][-3:]
        return float(np.median(seen)) if seen else 1.0

    def _pass_s(self, c: Candidate, store: _Store | None, faces: int) -> float:
        """Seconds of a trunk pass over ``faces`` faces: the fit of its store's passes so far
        (before the first prefix pass, the pooled trunk's probe)."""
        k = self.costs[c.backbone]
        return store.pass_s(faces, (k.startup_s, k.face_s)) if store is not None else \
            (k.startup_s + faces * k.face_s if faces else 0.0)

    def _train_s(self, c: Candidate) -> float:
        k = self.costs[c.backbone]
        return (k.train_s + c.steps * k.step_s) * self.factor("train") if c.strategy != "independent" else 0.0

    def _joint_s(self, c: Candidate) -> float:
        k = self.costs[c.backbone]
        return (k.joint_s + c.joint_steps * k.joint_step_s) * self.factor("joint") if c.strategy == "global" else 0.0

    def predicted(self, c: Candidate) -> float:
        """Seconds ``c`` would take alone on this device, predicted from the probe and every
        measurement since: trunk passes at the fit of the backbone's passes, training and the
        joint fine-tuning at their probed costs times their :meth:`factor`."""
        total = self.costs[c.backbone].create_s if c.strategy == "independent" else 0.0
        total += sum(self._pass_s(c, store, len(faces)) for store, _, faces, _ in self._passes(c))
        return total + self._train_s(c) + self._joint_s(c)

    def incremental(self, c: Candidate) -> float:
        """Seconds of the sweep's clock ``c`` still needs (shared work already done is free)."""
        total = self.eval_s
        for store, view, faces, _ in self._passes(c):
            total += self._pass_s(c, store, len(faces) if store is None else store.missing(view, faces))
        if c.base not in self.runs:
            total += self._train_s(c)
        return total + self.s.repeats * self._joint_s(c)

    def actual(self, c: Candidate) -> tuple[float, float]:
        """(actual seconds, of which trunk passes) of ``c``: its passes at the final fit of its
        backbone's passes, plus its measured training and fine-tuning time."""
        feature = self.costs[c.backbone].create_s if c.strategy == "independent" else 0.0
        for _, _, faces, kind in self._passes(c):
            feature += self._pass_s(c, (self.stores if kind == "pooled" else self.prefixes)[c.backbone], len(faces))
        res = self.results[c]
        return feature + res["train_s"] + res.get("joint_s", 0.0), feature

    # ------------------------------------------------------------------ running
    def run(self, c: Candidate, budget: float) -> dict[str, Any]:
        """Train and evaluate ``c`` (its standalone cost within ``budget``)."""
        t0 = time.perf_counter()
        store = self.stores[c.backbone]
        test_feats = store.get("plain", self.test).astype(np.float32)
        res: dict[str, Any] = {"train_s": 0.0, "pairs": 0, "faces": 0, "steps": 0, "stopped": None}
        joint: list[dict[str, Any]] = []
        if c.strategy == "independent":
            from .finetune import pretrained_vectors

            vectors = pretrained_vectors(test_feats)
        else:
            from .embed import head_vectors
            from .embedder import Embedder

            run, summary = self._proxy(c.base, budget)
            res.update(train_s=summary["seconds"], pairs=summary["pairs"], faces=summary["faces"],
                       steps=summary["steps"], stopped=summary["stopped"])
            embedder = Embedder.load(run)
            vectors = head_vectors(embedder, test_feats)
        t1 = time.perf_counter()
        if c.strategy == "global":
            rest = budget - self.predicted(c) + self._joint_s(c)
            res["error"] = self._error(self._global_namer(c, embedder, rest, joint), vectors)
            res["joint_s"] = float(np.mean([j["seconds"] for j in joint]))
            t1 += sum(j["seconds"] for j in joint)
        else:
            res["error"] = self._error(lambda named, seed: self._name(vectors, named, seed), vectors)
        self.results[c] = res
        self.eval_s = 0.5 * self.eval_s + 0.5 * (time.perf_counter() - t1)
        logger.info("%s: error %.4f in %.1f s", c.label(), res["error"], time.perf_counter() - t0)
        return res

    def _proxy(self, c: Candidate, budget: float) -> tuple[Path, dict[str, Any]]:
        """The proxy training of the sequential configuration ``c`` (run once, kept for global)."""
        if c in self.runs:
            return self.runs[c]
        from .train import TrainConfig, train

        tf = self.train_faces(c.fraction)
        store = self.stores[c.backbone]
        feats = np.stack([store.get(v, tf) for v in VIEWS]).astype(np.float32)
        k = self.costs[c.backbone]
        passes = len(VIEWS) * store.pass_s(len(tf)) + store.pass_s(len(self.test))
        cfg = TrainConfig(backbone=c.backbone, views=VIEWS, steps=c.steps, lr_schedule=c.lr_schedule,
                          time_budget=max(budget - passes, 1.0), seed=self.s.seed, device=self.device)
        run = self.work / f"run_{len(self.runs)}"
        ps = self.pairs.restrict(tf)
        summary = dict(train(self._sub(tf), ps, run, cfg, progress=False, features=feats), faces=len(tf))
        self.observe("train", summary["seconds"], k.train_s + summary["steps"] * k.step_s)
        summary["pairs"] = int(len(ps.unique()[0]))
        self.runs[c] = (run, summary)
        return self.runs[c]

    def _global_namer(self, c: Candidate, embedder: Any, budget: float, joint: list[dict[str, Any]]) -> Callable:
        """A namer that fine-tunes ``embedder`` jointly on the pairs and the names it is given."""
        from .finetune import GlobalConfig, fine_tune_global, suffix_vectors

        tf = self.train_faces(c.fraction)
        store = self._prefix(c.backbone)
        test_plain = store.get("plain", self.test)
        prefix = np.stack([np.concatenate([store.get(v, tf), test_plain]) for v in VIEWS])
        ps = self._joint_pairs(np.r_[tf, self.test], len(tf))

        def namer(named: dict[int, str], seed: int) -> list[str | None]:
            cfg = GlobalConfig(steps=c.joint_steps, time_budget=max(budget, 1.0), seed=seed, device=self.device)
            tuned, summary = fine_tune_global(embedder, prefix, ps, {len(tf) + i: n for i, n in named.items()},
                                              cfg, progress=False)
            k = self.costs[c.backbone]
            self.observe("joint", summary["seconds"], k.joint_s + summary["steps"] * k.joint_step_s)
            joint.append(summary)
            return self._name(suffix_vectors(tuned, prefix[0, len(tf):]), named, seed)

        return namer

    def _name(self, vectors: np.ndarray, named: dict[int, str], seed: int) -> list[str | None]:
        from .naming import name_faces

        return name_faces(vectors, named, seed=seed).names

    def _error(self, namer: Callable, vectors: np.ndarray) -> float:
        """The error of a configuration on the test faces (see the module docstring)."""
        from .benchmark import naming_scores
        from .train import score_vectors

        if self.named:
            acc, _ = naming_scores(self.identity, namer, self.s.shots, self.s.repeats, self.s.seed)
            return 1.0 - float(acc)
        return 1.0 - float(score_vectors(vectors, self.test_pos, self.test_neg))
