"""Sharded ingestion: the record ``ingest --shard I/N`` writes beside each shard's
manifest (``M.shard.json``: its place among all media, their digest, the settings, its
report) and :func:`merge_manifests`, which joins the N shard manifests into the one an
unsharded run writes.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ProxytasksError
from .fileio import atomic_write
from .manifest import Manifest

if TYPE_CHECKING:  # pragma: no cover
    from .ingest import IngestReport


SHARD_VERSION = 1


def shard_record_path(manifest: str | os.PathLike) -> Path:
    """Where ``ingest --shard`` records which media its manifest covers: ``M.shard.json``."""
    m = Path(manifest)
    return m.parent / f"{m.name}.shard.json"


def _digest(items: list[str]) -> str:
    import hashlib

    return hashlib.sha256("\n".join(items).encode("utf-8", "surrogateescape")).hexdigest()


def _write_shard_record(out: Path, shard: tuple[int, int], paths: list[str], rels: list[str], keys: list[str],
                        block: range, settings: dict, report: IngestReport) -> None:
    """``M.shard.json``: the shard's place among all media (the digest of every media's
    absolute path and key: shards of one run share it), its settings and its report."""
    record = {"version": SHARD_VERSION, "index": shard[0], "count": shard[1], "media": len(rels),
              "media_digest": _digest([f"{r}\t{k}" for r, k in zip(paths, keys)]),
              "block": [block.start, block.stop], "block_media": rels[block.start:block.stop],
              "settings": settings, "faces": report.faces, "done": report.done, "reused": report.reused,
              "skipped": report.skipped, "shots": report.shots}
    with atomic_write(shard_record_path(out)) as fh:
        json.dump(record, fh, indent=1)


def merge_manifests(manifests: list[str | os.PathLike], out: str | os.PathLike) -> Manifest:
    """Join the manifests of ``ingest --shard I/N`` runs (any order) into the manifest of
    the whole run: faces in media order, ids as one unsharded run gives them.

    Raises:
        ProxytasksError: naming the file, for a manifest without its shard record, a shard
            of another run (other media or settings), a shard given twice, or missing shards.
    """
    if not manifests:
        raise ProxytasksError("no manifest to merge")
    shards: dict[int, tuple[dict, Path]] = {}
    first: dict | None = None
    for m in map(Path, manifests):
        rec_path = shard_record_path(m)
        if not m.is_file():
            raise ProxytasksError(f"{m}: no such manifest")
        try:
            rec = json.loads(rec_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ProxytasksError(f"{m}: not a shard ({rec_path.name} is missing beside it); give the "
                                  "manifests that `proxytasks ingest --shard I/N` wrote") from None
        except (OSError, ValueError) as e:
            raise ProxytasksError(f"{rec_path}: unreadable shard record ({e})") from None
        if not isinstance(rec, dict) or rec.get("version") != SHARD_VERSION:
            raise ProxytasksError(f"{rec_path}: not a shard record of this version")
        if first is None:
            first, first_name = rec, m
        elif (rec["count"], rec["media"], rec["media_digest"]) != (first["count"], first["media"],
                                                                   first["media_digest"]):
            raise ProxytasksError(f"{m}: shard of another run ({rec['media']} media in {rec['count']} shards, "
                                  f"against {first['media']} in {first['count']} for {first_name}); give "
                                  "the shards of one media list")
        elif rec["settings"] != first["settings"]:
            other = sorted(k for k in set(rec["settings"]) | set(first["settings"])
                           if rec["settings"].get(k) != first["settings"].get(k))
            raise ProxytasksError(f"{m}: ingested with other settings than {first_name} ({', '.join(other)} "
                                  "differ); run every shard with the same options")
        i = rec["index"]
        if i in shards:
            raise ProxytasksError(f"{m}: shard {i} is also {shards[i][1]}")
        shards[i] = (rec, m)
    assert first is not None
    missing = sorted(set(range(first["count"])) - set(shards))
    if missing:
        raise ProxytasksError(f"shards {', '.join(map(str, missing))} of {first['count']} are missing "
                              f"(run `proxytasks ingest --shard I/{first['count']}` for them)")
    out = Path(out)
    out_dir = out.parent
    faces = []
    for i in range(first["count"]):
        rec, m = shards[i]
        if not rec["faces"]:
            continue
        part = Manifest.read(m)
        for f in part.faces:  # paths rebased onto the merged manifest's folder
            for name in ("image", "crop"):
                if getattr(f, name) is not None:
                    setattr(f, name, part._rebase(getattr(f, name), out_dir))
            if not os.path.isabs(f.media) and (part.root / f.media).exists():
                f.media = part._rebase(f.media, out_dir)
        faces.extend(part.faces)
    if not faces:
        raise ProxytasksError(f"no face in any of the {first['count']} shards")
    ids = [f.id for f in faces]
    if len(set(ids)) != len(ids):
        raise ProxytasksError("the shards share face ids: they are not shards of one run")
    merged = Manifest(faces, out_dir)
    merged.write(out)
    return merged
