"""Compute-budget sweep: which model, how much data and how much optimisation for a time budget.

Large-scale learning is limited by compute time, not by the number of examples (Bottou and
Bousquet): the final error splits into approximation (how rich the model family is: here the
backbone), estimation (how many examples: the rule pairs used) and optimisation (how far
training goes: steps and learning-rate schedule). Inside a fixed budget, lowering one raises
another, and the best mix changes with the budget. :func:`budget_sweep` measures that
trade-off on the user's own faces and device.

How a sweep runs:

1. **Split.** Held-out test faces (time chunks of each video, a share of photos) on which
   every configuration is evaluated; training uses the rest. A pair fraction ``f`` keeps the
   training faces of the first scenes (connected components of the must- and cannot-links,
   in seeded random order) until ``f`` of them are in, so a kept face keeps its constraints;
   ``pairs`` is the number of rule pairs among them.
2. **Probe.** Per backbone, on this device: the trunk's start-up and seconds per face (two
   passes over test faces, of one and two whole batches, after an untimed warm-up; the
   test faces are needed by every configuration anyway), the same for the trunk before its
   last stage when the ``global`` strategy is swept, ``train``'s fixed cost and seconds
   per step (per trunk width: one 300-step run on stand-in features, the line through its
   checkpoint times), and the joint fine-tuning's (two short runs).
3. **Candidates.** Strategy (:data:`proxytasks.systems.STRATEGIES`) x backbone x pair
   fraction x steps x schedule. A configuration's predicted cost is what it would take
   alone: trunk passes over its faces, training, the joint fine-tuning. Those predicted over
   a budget are skipped for it; of the rest, up to ``max_configs`` are sampled (seeded,
   favouring configurations that use more of the budget; the cheap ``independent`` ones
   always). The prediction is refined by every measurement: a trunk pass costs the
   least-squares line (start-up + faces x seconds per face) through all the passes of its
   backbone so far, and training and fine-tuning cost their probed time times the median
   measured / probed ratio of their last three runs, so a machine that slows down (other
   jobs) or speeds up is followed. Each configuration's prediction is recorded
   just before it runs, and one predicted over its budget by then is skipped.
4. **Run.** Budgets in increasing order; each has its own seconds of wall time to spend,
   plus what the earlier ones left (the probe is paid from the largest). Trunk features are
   computed once per backbone and face and shared: in the sweep's clock a configuration pays
   only for faces not computed yet, and one whose remaining cost does not fit what is left is
   skipped. ``train`` (:func:`proxytasks.train.train`, with its budget and its selection of
   the best checkpoint by a label-free validation score) runs on the precomputed features with
   the rest of the budget as its time budget.
5. **Record.** For each configuration run: predicted and actual seconds (actual: its face
   passes at the final line through all its backbone's passes in this sweep, since trunk
   outputs are shared, plus its measured training and fine-tuning time), and the error on the test faces: ``1 - naming
   accuracy`` at ``shots`` names per person (mean of ``repeats`` seeded draws) when faces
   carry ``identity``, each face named by the naming head alone (carrying names along tracks
   would hide the differences between embeddings), else ``1 - ROC-AUC`` of held-out must- vs
   cannot-link pairs. Per budget: the best configuration (lowest error among every
   configuration run whose actual cost fits the budget), the best of each strategy, and a
   conclusion saying whether the best configuration changes between the smallest and the
   largest budget, or why not.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components
from tqdm.auto import tqdm

from .errors import ProxytasksError
from .fileio import atomic_write
from .manifest import Manifest
from .pairs import PairSet

logger = logging.getLogger(__name__)

BACKBONES = ("mobilenetv2_100", "tf_efficientnet_lite0", "dlib_resnet29")
FRACTIONS = (0.25, 0.5, 1.0)
STEPS = (50, 200, 800, 3200)
SCHEDULES = ("constant", "cosine")
JOINT_STEPS = 100  # joint fine-tuning steps of a "global" configuration, after its proxy training
VIEWS = ("plain", "flip")  # views of a training face (two: a photo collection's positive pair)
PROBE_BATCHES = (1, 3)  # the two probe passes end after this many batches of test faces
PROBE_STEPS = 300  # steps of the probe training (one per trunk width), checkpoints every 50


@dataclass(frozen=True)
class Candidate:
    """One configuration: strategy, backbone (approximation), pair fraction (estimation),
    steps and schedule (optimisation); ``joint_steps`` for the global strategy."""

    strategy: str
    backbone: str
    fraction: float = 0.0
    steps: int = 0
    lr_schedule: str = "none"
    joint_steps: int = 0

    @property
    def base(self) -> "Candidate":
        """The proxy training (sequential configuration) a global one starts from."""
        return Candidate("sequential", self.backbone, self.fraction, self.steps, self.lr_schedule)

    def label(self) -> str:
        if self.strategy == "independent":
            return f"independent {self.backbone}"
        text = f"{self.strategy} {self.backbone} {self.fraction:g} of pairs, {self.steps} steps {self.lr_schedule}"
        return text + (f" + {self.joint_steps} joint" if self.joint_steps else "")


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


@dataclass
class SweepSettings:
    """Options of :func:`budget_sweep`; field names equal the ``proxytasks budget`` options."""

    budgets: tuple[float, ...] = (60.0, 180.0, 600.0)
    backbones: tuple[str, ...] | None = None  # None: those of BACKBONES with weights here
    fractions: tuple[float, ...] = FRACTIONS
    steps: tuple[int, ...] = STEPS
    schedules: tuple[str, ...] = SCHEDULES
    strategies: tuple[str, ...] = ("independent", "sequential", "global")
    joint_steps: int = JOINT_STEPS
    max_configs: int = 8
    shots: int = 1
    repeats: int = 3
    test_share: float = 0.3
    seed: int = 0
    device: str = "auto"
    workers: int = 1
    batch_size: int = 64


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
    n = pairs.n_faces
    graph = coo_matrix((np.ones(int(keep.sum())), (i[keep], j[keep])), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    faces = np.flatnonzero(train)
    rank = np.random.default_rng(seed).permutation(comp.max() + 1)[comp[faces]]
    order = np.lexsort((faces, rank))
    return faces[order], np.flatnonzero(np.r_[True, np.diff(rank[order]) != 0])


def first_scenes(order: np.ndarray, starts: np.ndarray, fraction: float) -> np.ndarray:
    """The faces (sorted) of the fewest first scenes of ``order`` that hold ``fraction`` of it."""
    ends = np.r_[starts[1:], len(order)]
    k = ends[min(np.searchsorted(ends, fraction * len(order) - 1e-9), len(ends) - 1)]
    return np.sort(order[:k])


class _Sweep:
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
        from .systems import GlobalConfig, fine_tune_global

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
            from .systems import prefix_features

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
            from .systems import pretrained_vectors

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
        from .systems import GlobalConfig, fine_tune_global, suffix_vectors

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


# --------------------------------------------------------------------------- the sweep
def candidates(s: SweepSettings, backbones: Sequence[str]) -> list[Candidate]:
    """Every configuration of the grid, in a fixed order."""
    out = [Candidate("independent", b) for b in backbones if "independent" in s.strategies]
    for b in backbones:
        for f in s.fractions:
            for st in s.steps:
                for sched in s.schedules:
                    if "sequential" in s.strategies:
                        out.append(Candidate("sequential", b, f, st, sched))
                    if "global" in s.strategies and sched == s.schedules[0]:
                        out.append(Candidate("global", b, f, st, sched, s.joint_steps))
    return out


def _sample(pool: list[tuple[Candidate, float]], k: int, budget: float, seed: int) -> list[Candidate]:
    """``k`` of ``pool`` ((candidate, predicted seconds)) at random, weights by predicted cost;
    every independent one kept on top."""
    cheap = [c for c, _ in pool if c.strategy == "independent"]
    rest = [(c, p) for c, p in pool if c.strategy != "independent"]
    if len(rest) > k:
        w = np.array([max(p, 1e-3) / budget for _, p in rest])
        pick = np.random.default_rng([seed, int(budget)]).choice(len(rest), k, replace=False, p=w / w.sum())
        rest = [rest[i] for i in sorted(pick)]
    return cheap + [c for c, _ in rest]


def _row(c: Candidate, res: dict[str, Any] | None, predicted: float, reason: str | None = None) -> dict[str, Any]:
    """A configuration as budget.json lists it (``actual_s`` is filled in at the end)."""
    row = {"strategy": c.strategy, "backbone": c.backbone, "pairs": None, "fraction": c.fraction,
           "steps": c.steps, "lr_schedule": c.lr_schedule, "joint_steps": c.joint_steps,
           "predicted_s": round(predicted, 3), "actual_s": None, "error": None,
           "status": "run" if res is not None else "skipped"}
    if reason:
        row["reason"] = reason
    if res is not None:
        row.update(pairs=res["pairs"], faces=res["faces"], steps_run=res["steps"], stopped=res["stopped"],
                   error=round(res["error"], 5), train_s=round(res["train_s"], 3))
        if "joint_s" in res:
            row["joint_s"] = round(res["joint_s"], 3)
    return row


def _key(row: dict[str, Any]) -> tuple:
    return (row["strategy"], row["backbone"], row["fraction"], row["steps"], row["lr_schedule"], row["joint_steps"])


def budget_sweep(manifest: Manifest, pairs: PairSet, out: str | os.PathLike, settings: SweepSettings | None = None,
                 progress: bool = True) -> dict[str, Any]:
    """Run the sweep (see the module docstring); writes ``out/budget.json``, ``out/budget.md``
    and the plots ``out/budget_*.svg``; returns the contents of budget.json."""
    from .models import WeightsNotFoundError, resolve_weights
    from .systems import STRATEGIES

    s = settings or SweepSettings()
    start = time.perf_counter()
    _check_settings(s, STRATEGIES)
    if pairs.n_faces != len(manifest):
        raise ProxytasksError(f"the pairs index {pairs.n_faces} faces but the manifest holds {len(manifest)}")
    backbones = list(s.backbones) if s.backbones else []
    if not backbones:
        for b in BACKBONES:
            try:
                resolve_weights(b)
                backbones.append(b)
            except WeightsNotFoundError as e:
                logger.warning("budget sweep without %s: %s", b, e)
        if not backbones:
            raise ProxytasksError(f"no weights found for any of {', '.join(BACKBONES)}; install one (see above)")
    out = Path(out)
    work = out / ".work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    try:
        sw = _Sweep(manifest, pairs, work, s)
        if "global" in s.strategies and not sw.named:
            logger.warning("budget sweep without the global strategy: the held-out faces carry no identities "
                           "to fine-tune on")
            s = replace(s, strategies=tuple(x for x in s.strategies if x != "global"))
            sw.s = s
        for b in tqdm(backbones, desc="probe", unit="backbone", disable=not progress):
            sw.probe(b, s.strategies)
        grid = candidates(s, backbones)
        budgets = sorted(set(float(b) for b in s.budgets))
        rows: dict[str, Any] = {}
        probe_s, left = time.perf_counter() - start, 0.0
        for budget in budgets:
            clock = time.perf_counter()
            left += budget - (probe_s if budget == budgets[-1] else 0.0)  # the largest budget pays the probe
            pool = [(c, sw.predicted(c)) for c in grid if c not in sw.results]
            fits = [(c, p) for c, p in pool if p <= budget]
            # the cheap independent baselines first, then the rest from the most expensive down
            chosen = sorted(_sample(fits, s.max_configs, budget, s.seed),
                            key=lambda c: (c.strategy != "independent", -sw.predicted(c)))
            configs = []
            bar = tqdm(chosen, desc=f"budget {budget:g} s", unit="config", disable=not progress)
            for c in bar:
                need, predicted = sw.incremental(c), sw.predicted(c)  # recorded before the run
                spent = time.perf_counter() - clock
                if predicted > budget or need > left - spent:
                    reason = (f"predicted {predicted:.0f} s by now, over the budget" if predicted > budget else
                              f"needs about {need:.0f} s of the {max(left - spent, 0):.0f} s left for this budget")
                    configs.append(_row(c, None, predicted, reason=reason))
                    continue
                res = sw.run(c, budget)
                configs.append(_row(c, res, predicted))
                bar.set_postfix(error=f"{res['error']:.3f}")
            left -= time.perf_counter() - clock
            rows[f"{budget:g}"] = {"configs": configs, "seconds": round(time.perf_counter() - clock, 3),
                                   "over_budget": len(pool) - len(fits)}
        _finish_rows(sw, rows)
        result = {"error": sw.error_name, "lower_is_better": True, "device": sw.device,
                  "faces": {"train": int(len(sw.order)), "test": int(len(sw.test))},
                  "probe": {b: {"faces_per_s": round(1 / k.face_s, 2), "create_s": round(k.create_s, 3),
                                "train_fixed_s": round(k.train_s, 3), "step_ms": round(1e3 * k.step_s, 3),
                                "joint_fixed_s": round(k.joint_s, 3), "joint_step_ms": round(1e3 * k.joint_step_s, 3)}
                            for b, k in sw.costs.items()},
                  "probe_s": round(probe_s, 3), "budgets": rows}
        result["conclusion"] = conclusion(result)
        result["seconds"] = round(time.perf_counter() - start, 3)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    write_outputs(result, out)
    return result


def _check_settings(s: SweepSettings, strategies: Sequence[str]) -> None:
    problems = []
    if not s.budgets or min(s.budgets) <= 0:
        problems.append("--budgets must be positive seconds")
    if not s.fractions or not all(0 < f <= 1 for f in s.fractions):
        problems.append("--fractions must lie in (0, 1]")
    if not s.steps or min(s.steps) < 1:
        problems.append("--steps must be positive")
    bad = [x for x in s.schedules if x not in SCHEDULES]
    if bad or not s.schedules:
        problems.append(f"--schedules: choose from {', '.join(SCHEDULES)}")
    bad = [x for x in s.strategies if x not in strategies]
    if bad or not s.strategies:
        problems.append(f"--strategies: choose from {', '.join(strategies)}")
    if s.max_configs < 1 or s.shots < 1 or s.repeats < 1:
        problems.append("--max-configs, --shots and --repeats must be at least 1")
    if problems:
        raise ProxytasksError("; ".join(problems))


def _finish_rows(sw: _Sweep, rows: dict[str, Any]) -> None:
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


def describe(row: dict[str, Any] | None) -> str:
    """A configuration row in words."""
    if row is None:
        return "none"
    return Candidate(row["strategy"], row["backbone"], row["fraction"], row["steps"], row["lr_schedule"],
                     row["joint_steps"]).label()


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
    if _key(lo) != _key(hi):
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


# --------------------------------------------------------------------------- outputs
def plots(result: dict[str, Any]) -> list[str]:
    """Inline SVG plots of a sweep: error vs compute (every configuration, the lower envelope
    per budget), the best error per budget of each strategy, predicted vs actual seconds."""
    from .report import line_plot

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
