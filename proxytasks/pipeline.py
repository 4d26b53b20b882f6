"""The pipeline in library calls: one function per stage with the defaults the commands
use, and the glue between stages that used to live in the CLI.

It is the one home of the default rules (:data:`DEFAULT_RULES`, from
:mod:`proxytasks.defaults`), of "track when there are no tracks" (:func:`untracked`,
:func:`tracked_pairs`) and of the checks that two stage outputs belong together
(:func:`manifest_tracks`, :func:`check_model`). ``proxytasks/__init__.py`` exports these
functions beside the stages' own (see the README, "Use as a library")::

    tracked = track_manifest(manifest)
    pairs = rule_pairs(tracked)
    train_model(tracked, pairs, "run", steps=100)
    emb = embed_faces("run", tracked)
    people = cluster_people(emb, tracked, pairs)

Heavy stages (torch, faiss) are imported inside the functions, so importing this module
stays light.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

from .defaults import DEFAULT_RULES
from .errors import ProxytasksError
from .manifest import Manifest

if TYPE_CHECKING:  # pragma: no cover
    from .active import Suggestion
    from .cluster import ClusterResult
    from .embed import Embeddings
    from .index import FaceIndex
    from .naming import Annotations
    from .pairs import PairSet

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_RULES", "build_index", "check_model", "check_same_faces", "cluster_people", "embed_faces", "frame_links",
           "manifest_tracks", "name_run", "nothing_named", "rule_pairs", "suggest_faces", "train_model", "tracked_pairs", "untracked",
           "untracked_hint"]


def untracked(manifest: Manifest) -> bool:
    """Whether ``manifest`` holds video faces (a ``frame``) but no track at all: the
    track rules (same-track, track-cooccurrence) give no pair until ``track`` runs."""
    return all(f.track is None for f in manifest.faces) and any(f.frame is not None for f in manifest.faces)


def untracked_hint(name: str | os.PathLike) -> str:
    """What to do about an untracked manifest ``name`` (see :func:`untracked`)."""
    return (f"{name} has video faces but no tracks: the track rules (same-track, track-cooccurrence) give no "
            f"pairs. Run `proxytasks track {name} -o TRACKED.jsonl` first, then `pairs` on TRACKED.jsonl")


def tracked_pairs(manifest: Manifest, out: str | os.PathLike, progress: bool = True, keep_tracks: bool = True
                  ) -> tuple[Manifest, "PairSet"]:
    """The manifest tracked (when it has video frames and no track; written to
    ``out/tracked.jsonl``) and its pairs by the default rules (written to ``out/pairs.npz``).

    ``keep_tracks=False`` drops the tracks the manifest gives first (they may come from
    ground truth), so the faces are always tracked here.
    """
    from .track import track_manifest

    out = Path(out)
    given = sum(f.track is not None for f in manifest.faces)
    if given and not keep_tracks:
        logger.info("the %d tracks given in the manifest are dropped and the faces tracked again "
                    "(--keep-tracks uses them)", len({(f.media, f.track) for f in manifest.faces if f.track}))
        manifest = manifest.replace(track=[None] * len(manifest))
    elif given:
        logger.warning("the manifest's own tracks are used as they are (--keep-tracks): tracks taken from ground "
                       "truth flatter every method that carries names along tracks")
    if untracked(manifest):
        manifest = track_manifest(manifest, progress=progress)
        manifest.write(out / "tracked.jsonl")
    pairs = rule_pairs(manifest)
    pairs.save(out / "pairs.npz")
    return manifest, pairs


def rule_pairs(manifest: Manifest, rules: str | Sequence[Any] = DEFAULT_RULES, policy: str = "different",
               labels: Sequence[str | os.PathLike] = (), clusters: str | os.PathLike | None = None,
               source: str | os.PathLike = "the manifest") -> "PairSet":
    """The pairs of ``rules`` over ``manifest``, conflicts resolved by ``policy``, plus
    the pairs a person's naming rounds give (``labels``, in order; ``clusters``: the CSV
    that their ``cluster,name`` rows refer to), which win over the rules'.

    Logs a warning (:func:`untracked_hint`, naming ``source``) when the manifest has
    video faces but no tracks.
    """
    from .rules import RuleSet

    if untracked(manifest):
        logger.warning(untracked_hint(source))
    ps = RuleSet(rules, policy=policy).apply(manifest)
    if labels:
        from .active import human_pairs
        from .cluster import read_clusters
        from .naming import read_annotations

        ids = [f.id for f in manifest.faces]
        ann = read_annotations(labels, ids, read_clusters(clusters, ids) if clusters is not None else None)
        ps = ps.with_human(*human_pairs(ann))
    return ps


def train_model(manifest: Manifest, pairs: "PairSet", run: str | os.PathLike, config: Any = None,
                progress: bool = True, resume: bool = False, **options: Any) -> dict[str, Any]:
    """Train the embedding on the rule ``pairs`` into the run folder ``run``
    (:func:`proxytasks.train.train`); ``options`` are :class:`~proxytasks.train.TrainConfig`
    fields (``steps=100``, ``time_budget=60``, ``backbone=...``). Returns the summary."""
    from .train import TrainConfig, train

    if config is not None and options:
        raise ProxytasksError("give train_model a config or TrainConfig options, not both")
    try:
        cfg = config if config is not None else TrainConfig(**options)
    except TypeError as e:
        raise ProxytasksError(f"train_model: {e}") from None
    return train(manifest, pairs, run, cfg, resume=resume, progress=progress)


def embed_faces(run: str | os.PathLike, manifest: Manifest, batch_size: int = 64, workers: int = 1,
                device: str = "auto", progress: bool = True) -> "Embeddings":
    """Unit vectors of every face of ``manifest`` by the model of the run folder ``run``
    (:func:`proxytasks.embed.embed_manifest`); ``.save(path)`` writes what ``embed`` writes."""
    from .embed import embed_manifest
    from .embedder import Embedder
    from .models import select_device

    return embed_manifest(Embedder.load(run), manifest, batch_size, workers, progress, str(select_device(device)))


def build_index(embeddings: "Embeddings", factory: str | None = None, memory_gb: float = 4.0,
                device: str = "auto") -> "FaceIndex":
    """A FAISS index over ``embeddings`` (type chosen from size and memory unless ``factory``)."""
    from .index import FaceIndex

    return FaceIndex.build(embeddings.vectors, embeddings.ids, factory=factory, memory_budget_gb=memory_gb,
                           source=embeddings.meta, device=device)


def check_same_faces(embeddings: "Embeddings", manifest: Manifest, emb: str | os.PathLike = "the embeddings",
                     name: str | os.PathLike = "the manifest") -> None:
    """Refuse embeddings (file ``emb``) that do not hold the faces of ``manifest`` (file
    ``name``) in order."""
    if embeddings.ids != [f.id for f in manifest.faces]:
        raise ProxytasksError(f"{emb} does not hold the faces of {name} in order; embed that manifest")


def cluster_people(embeddings: "Embeddings", manifest: Manifest, pairs: "PairSet", **options: Any
                   ) -> "ClusterResult":
    """People, their number unknown (:func:`proxytasks.cluster.cluster_faces`): tracks
    kept whole, cannot-linked faces kept apart. ``options``: ``k``, ``threshold``, ``seed``,
    ``threshold_rule``...; ``trained_on_links`` defaults to what the embeddings' header says:
    False for the identity head (the run kept the pretrained features), True for a trained
    projection head, None (not known) when the header has no ``head``. So the
    threshold rule follows the run that embedded them."""
    from .cluster import cluster_faces, constraint_arrays

    check_same_faces(embeddings, manifest)
    groups, cannot = constraint_arrays(manifest, pairs)
    head = embeddings.meta.get("head")
    options.setdefault("trained_on_links", None if head is None else head != "identity")
    return cluster_faces(embeddings.vectors, groups=groups, cannot_links=cannot, **options)


def suggest_faces(embeddings: "Embeddings", manifest: Manifest, clusters: np.ndarray | None = None,
                  annotations: "Annotations | None" = None, strategy: str = "margin", n: int = 20,
                  pairs: int = 0, seed: int = 0) -> list["Suggestion"]:
    """Which faces a person should name next (:func:`proxytasks.active.suggest`), each with
    its reason, plus ``pairs`` "same person?" questions; ``annotations``: the naming rounds so far."""
    from .active import Pool, check_strategies, suggest
    from .naming import Annotations, name_from_annotations

    check_strategies([strategy])
    check_same_faces(embeddings, manifest)
    tracks = manifest.columns().track
    ann = annotations if annotations is not None else Annotations()
    result = name_from_annotations(embeddings.vectors, ann, tracks=tracks, clusters=clusters,
                                   seed=seed) if ann.named else None
    return suggest(Pool(embeddings.vectors, tracks, clusters, ann, result), strategy, n, pairs, seed)


def manifest_tracks(manifest: str | os.PathLike | Manifest, ids: Sequence[str], what: str | os.PathLike
                    ) -> np.ndarray:
    """The track code of each face of ``manifest`` (-1: none), which must hold the faces
    ``ids`` (of ``what``, e.g. an embeddings file) in order."""
    m = manifest if isinstance(manifest, Manifest) else Manifest.read(manifest, check_files=False)
    if [f.id for f in m.faces] != list(ids):
        name = "the manifest" if isinstance(manifest, Manifest) else manifest
        raise ProxytasksError(f"{name} does not hold the faces of {what} in order")
    return m.columns().track


def frame_links(manifest: str | os.PathLike | Manifest) -> np.ndarray:
    """Face pairs of ``manifest`` that share a frame or a photo: two people (cannot-links)."""
    from .assign import frame_cannot_links

    m = manifest if isinstance(manifest, Manifest) else Manifest.read(manifest, check_files=False)
    return frame_cannot_links([f.media for f in m.faces], [f.frame for f in m.faces])


def check_model(run: str | os.PathLike, meta: dict[str, Any], emb: str | os.PathLike) -> None:
    """Refuse a run folder ``run`` that does not exist, or whose model did not embed the
    embeddings ``emb`` (their header ``meta``: backbone and model digest)."""
    run = Path(run)
    if not run.is_dir():
        raise ProxytasksError(f"{run}: no such run folder (the -o of `proxytasks train`)"
                              if not run.exists() else f"{run}: not a run folder (a file)")
    config = run / "config.json"
    try:
        saved = json.loads(config.read_text()) if config.is_file() else None
    except (OSError, ValueError) as e:
        raise ProxytasksError(f"{config}: cannot read the run's config ({e})") from None
    if isinstance(saved, dict) and (saved.get("backbone") != meta.get("backbone") or (
            "model_sha256" in meta and saved.get("model_sha256") != meta["model_sha256"])):
        raise ProxytasksError(f"{emb} was not embedded with the model of {run}")


def nothing_named(labels: Sequence[str | os.PathLike]) -> str:
    """What to do when the naming rounds ``labels`` hold no name (an unfilled sheet, typically)."""
    labels = [Path(p) for p in labels]
    sheets = [p for p in labels if p.parent.name.startswith("round")]
    folder = sheets[0].parent.parent if sheets else Path("DIR")
    return (f"no face is named in {', '.join(map(str, labels))}: nothing to name the faces from. Fill the "
            f"'name' column of {labels[0]} (and 'answer', same or different, for the 'same person?' rows), "
            f"or name the people in the app: proxytasks app {folder}; then run this again (after the app: "
            f"with {folder / 'app' / 'labels.csv'} as the labels)")


def name_run(run: str | os.PathLike, emb: str | os.PathLike, labels: Sequence[str | os.PathLike],
             manifest: str | os.PathLike | None = None, clusters: str | os.PathLike | None = None,
             strategy: str = "sequential", pairs: str | os.PathLike | None = None, steps: int | None = None,
             time_budget: float | None = None, seed: int = 0, progress: bool = True, **naming: Any
             ) -> tuple[list[str], Any, dict[str, Any]]:
    """What ``proxytasks name`` does, from files: every face of the embeddings ``emb`` named
    from the naming rounds ``labels`` by ``strategy`` over the model of the run folder ``run``.

    With ``manifest``: names carried along its tracks, never one name for two faces of one
    frame, faces marked low quality left unknown unless named; ``clusters``: a CSV
    ``id,cluster``; ``pairs``, ``steps``, ``time_budget``: joint fine-tuning of strategy
    "global". ``naming``: ``head``, ``unknown_threshold``. Returns the face ids, the
    :class:`~proxytasks.naming.NamingResult` and what the strategy did.
    """
    from .cluster import read_clusters
    from .embed import Embeddings
    from .naming import read_annotations, unname_marked
    from .pairs import PairSet
    from .rules import low_quality_mask
    from .finetune import GlobalConfig, name_with_strategy

    e = Embeddings.load(emb)
    m = Manifest.read(manifest, check_files=strategy in ("independent", "global")) if manifest is not None else None
    if m is not None:  # before the sheets: their ids are checked against the embeddings' faces
        check_same_faces(e, m, emb, manifest)
    groups = read_clusters(clusters, e.ids) if clusters is not None else None
    ann = read_annotations(labels, e.ids, groups)
    if not ann.named:
        raise ProxytasksError(nothing_named(labels))
    check_model(run, e.meta, emb)
    tracks = m.columns().track if m is not None else None
    ps = PairSet.load(pairs, face_ids=e.ids) if pairs is not None and strategy == "global" else None
    cfg = GlobalConfig(steps=200 if steps is None and time_budget is None else steps, time_budget=time_budget,
                       seed=seed)
    result, info = name_with_strategy(strategy, run, e, ann, m if strategy in ("independent", "global") else None,
                                      ps, cfg, progress, tracks=tracks, clusters=groups, seed=seed,
                                      cannot_links=frame_links(m) if m is not None else None, **naming)
    if m is not None:
        result = unname_marked(result, low_quality_mask(m), ann.named)
    return e.ids, result, info
