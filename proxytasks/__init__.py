"""proxytasks: transfer learning from cheap-label proxy tasks to bootstrap face naming.

Stages are library functions first (``proxytasks.<stage>``) and click commands second
(``proxytasks.cli``). The pipeline's main functions are importable from here, one per
stage (see the README, "Use as a library"):

=========  ==========================================================================
stage      function
=========  ==========================================================================
ingest     :func:`ingest_media` (videos, photos -> manifest), :func:`merge_manifests`
track      :func:`track_manifest`
pairs      :func:`rule_pairs` (:class:`RuleSet`, :class:`PairSet`), :func:`audit_pairs`
train      :func:`train_model` (:class:`TrainConfig`)
embed      :func:`embed_faces` (:class:`Embeddings`)
index      :func:`build_index` (:class:`FaceIndex`)
cluster    :func:`cluster_people` (:func:`cluster_faces` on plain vectors)
suggest    :func:`suggest_faces`
name       :func:`name_faces`, :func:`name_from_annotations`, :func:`write_names`
export     :func:`export_dataset`
benchmark  :func:`run_benchmark`
=========  ==========================================================================

The names differ from the stage modules' (``proxytasks.train`` is the module): a
function called ``train`` here would be replaced by the module as soon as it is
imported. Attributes load on first use (PEP 562), so ``import proxytasks`` (and
``proxytasks --help``) imports neither torch nor faiss.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import ManifestError, ProxytasksError

__version__ = "0.1.0"

#: public name -> (module, attribute)
_LAZY: dict[str, tuple[str, str]] = {
    "Face": ("manifest", "Face"),
    "Manifest": ("manifest", "Manifest"),
    "FaceColumns": ("manifest", "FaceColumns"),
    "PairSet": ("pairs", "PairSet"),
    "RuleSet": ("rules", "RuleSet"),
    "DEFAULT_RULES": ("defaults", "DEFAULT_RULES"),
    "DEFAULT_BACKBONE": ("defaults", "DEFAULT_BACKBONE"),
    "ingest_media": ("ingest", "ingest_media"),
    "merge_manifests": ("ingest_shards", "merge_manifests"),
    "track_manifest": ("track", "track_manifest"),
    "TrackerConfig": ("track", "TrackerConfig"),
    "rule_pairs": ("pipeline", "rule_pairs"),
    "tracked_pairs": ("pipeline", "tracked_pairs"),
    "audit_pairs": ("evaluate", "audit_pairs"),
    "train_model": ("pipeline", "train_model"),
    "TrainConfig": ("train", "TrainConfig"),
    "embed_faces": ("pipeline", "embed_faces"),
    "Embeddings": ("embed", "Embeddings"),
    "build_index": ("pipeline", "build_index"),
    "FaceIndex": ("index", "FaceIndex"),
    "cluster_people": ("pipeline", "cluster_people"),
    "cluster_faces": ("cluster", "cluster_faces"),
    "suggest_faces": ("pipeline", "suggest_faces"),
    "name_faces": ("naming", "name_faces"),
    "name_from_annotations": ("naming", "name_from_annotations"),
    "name_run": ("pipeline", "name_run"),
    "Annotations": ("annotations", "Annotations"),
    "read_annotations": ("annotations", "read_annotations"),
    "write_names": ("naming", "write_names"),
    "export_dataset": ("export", "export_dataset"),
    "run_benchmark": ("benchmark", "run_benchmark"),
}

__all__ = ["ManifestError", "ProxytasksError", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    """Load a public name of :data:`_LAZY` from its module on first use (PEP 562)."""
    if name in _LAZY:
        module, attribute = _LAZY[name]
        value = getattr(importlib.import_module(f".{module}", __name__), attribute)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
