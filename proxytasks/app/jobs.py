"""The app's background work: Update (naming again, optionally retraining first) and Export.

Update takes a snapshot of what a person said, then, in a thread: optionally trains the
embedding again on the rule pairs plus the person's answers (``human_pairs``) within a
time budget, into ``DIR/app/run`` and ``DIR/app/embeddings.npz`` (swapped in only once
finished); names every face (:func:`~proxytasks.naming.name_from_annotations`, tracks and
the person's clusters carrying the names); writes ``DIR/app/names.csv``. The page polls
``GET /api/update`` for ``{"state", "progress", "message"}``.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ProxytasksError
from .state import ApiError, Workspace

logger = logging.getLogger(__name__)

MAX_BUDGET = 3600.0


@dataclass
class Job:
    """The state of the last Update: idle, running, done or failed."""

    state: str = "idle"
    progress: float = 0.0
    message: str = ""
    error: str | None = None
    started: float | None = None
    seconds: float | None = None
    retrain: bool = False
    changed: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def view(self) -> dict[str, Any]:
        with self.lock:
            out = {"state": self.state, "progress": round(self.progress, 3), "message": self.message,
                   "retrain": self.retrain, "changed": self.changed, "seconds": self.seconds}
            if self.error:
                out["error"] = self.error
            return out

    def set(self, progress: float | None = None, message: str | None = None) -> None:
        with self.lock:
            if progress is not None:
                self.progress = max(self.progress, min(progress, 1.0))
            if message is not None:
                self.message = message


def _check_update(body: Any) -> tuple[bool, float]:
    if body is None:
        body = {}
    if not isinstance(body, dict) or set(body) - {"retrain", "budget"}:
        raise ApiError(400, "the body must be a JSON object with optional retrain (true/false) and budget (seconds)")
    retrain = body.get("retrain", False)
    budget = body.get("budget", 60)
    if not isinstance(retrain, bool):
        raise ApiError(400, "retrain must be true or false")
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 1 <= budget <= MAX_BUDGET:
        raise ApiError(400, f"budget must be a number of seconds from 1 to {MAX_BUDGET:.0f}")
    return retrain, float(budget)


class Updater:
    """Runs one Update at a time for a :class:`Workspace`."""

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.job = Job()
        self.thread: threading.Thread | None = None

    def start(self, body: Any) -> dict[str, Any]:
        retrain, budget = _check_update(body)
        ws = self.ws
        with ws.lock:
            ws.refresh()
            if self.job.state == "running":
                raise ApiError(409, "an update is already running; wait for it to finish")
            if not ws.ann.named:
                raise ApiError(409, "no face is named yet: name a person first, then update")
            if retrain and ws.sources.pairs is None:
                raise ApiError(409, f"retraining needs the rule pairs ({ws.folder / 'pairs.npz'} is absent)")
            ann, labels, version = copy.deepcopy(ws.ann), ws.labels.copy(), ws.applied
            self.job = Job(state="running", message="starting", started=time.time(), retrain=retrain)
        self.thread = threading.Thread(target=self._run, args=(ann, labels, version, retrain, budget),
                                       name="proxytasks-update", daemon=True)
        self.thread.start()
        return self.job.view()

    def _run(self, ann, labels, version: int, retrain: bool, budget: float) -> None:
        job = self.job
        try:
            vectors = self._retrain(ann, budget) if retrain else None
            job.set(0.85 if retrain else 0.2, "naming every face")
            changed = self.ws_name(ann, labels, version, vectors)
            with job.lock:
                job.state, job.progress, job.changed = "done", 1.0, changed
                job.message = f"names updated: {changed} face(s) changed name"
        except Exception as e:  # reported on the page; the server keeps serving
            logger.exception("update failed")
            with job.lock:
                job.state, job.error = "failed", str(e) if isinstance(e, ProxytasksError) else f"{type(e).__name__}: {e}"
                job.message = "update failed"
        finally:
            job.seconds = round(time.time() - (job.started or time.time()), 2)

    def ws_name(self, ann, labels, version: int, vectors=None) -> int:
        """Name every face from ``ann``; write ``DIR/app/names.csv``; show the names."""
        from ..naming import name_from_annotations, write_names

        ws = self.ws
        x = ws.vectors if vectors is None else vectors
        result = name_from_annotations(x, ann, tracks=ws.tracks, clusters=labels, seed=0)
        write_names(ws.sources.app / "names.csv", ws.ids, result)
        with ws.lock:
            old = ws.result
            if vectors is not None:
                ws.set_vectors(vectors)
            ws.result, ws.result_version = result, version
        if old is None:
            return sum(n is not None for n in result.names)
        return sum(a != b for a, b in zip(old.names, result.names))

    def _retrain(self, ann, budget: float):
        """Train on the rule pairs plus the person's answers within ``budget`` seconds,
        embed, and swap the new run and embeddings in; returns the new vectors.

        Faces are decoded in this thread (no DataLoader worker process): a worker forked
        from a process running the server's threads can inherit a lock another thread
        holds and hang (a CI run once waited 180 s in the embedding after a retrain)."""
        from ..active import human_pairs
        from ..embed import embed_to_file
        from ..embedder import Embedder
        from ..features import copy_cache
        from ..manifest import Manifest
        from ..pairs import PairSet
        from ..train import TrainConfig, train

        ws, job = self.ws, self.job
        app = ws.sources.app
        nxt, emb_next = app / "run.next", app / "embeddings.next.npz"
        shutil.rmtree(nxt, ignore_errors=True)
        nxt.mkdir(parents=True)
        options: dict[str, Any] = {}
        if ws.sources.run is not None:  # the first run's settings (backbone, head, views, ...)
            try:
                saved = json.loads((ws.sources.run / "config.json").read_text()).get("options", {})
            except (OSError, ValueError, AttributeError):
                saved = {}
            known = {f.name for f in dataclasses.fields(TrainConfig)} - {"time_budget", "steps", "epochs", "resume"}
            options = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k in known}
            copy_cache(ws.sources.run, nxt)  # the trunk features, reused when their key matches
        job.set(0.02, f"training for up to {budget:.0f} s with {len(ann.named)} named faces")
        manifest = Manifest.read(ws.sources.manifest)
        pairs = PairSet.load(ws.sources.pairs, face_ids=ws.ids).with_human(*human_pairs(ann))
        stop = threading.Event()

        def tick() -> None:
            began = time.time()
            while not stop.wait(0.5):
                job.set(0.02 + 0.7 * min((time.time() - began) / budget, 1.0))

        ticker = threading.Thread(target=tick, daemon=True)
        ticker.start()
        try:
            summary = train(manifest, pairs, nxt, TrainConfig(**{**options, "time_budget": budget, "workers": 0}),
                            progress=False)
        finally:
            stop.set()
        job.set(0.75, f"trained {summary['steps']} steps; embedding the faces")
        emb = embed_to_file(Embedder.load(nxt), manifest, emb_next, workers=0, progress=False)
        run = app / "run"
        if run.exists():
            shutil.rmtree(run)
        nxt.rename(run)
        emb_next.replace(app / "embeddings.npz")
        ws.sources.run, ws.sources.emb = run, app / "embeddings.npz"
        return emb.vectors


def export(ws: Workspace, updater: Updater, body: Any) -> dict[str, Any]:
    """Name every face from what the person said so far, then the library's export into
    ``DIR/app/dataset`` (an earlier export of the app there is replaced)."""
    from ..export import export_dataset

    if body is None:
        body = {}
    if not isinstance(body, dict) or set(body) - {"min_confidence"}:
        raise ApiError(400, "the body must be a JSON object with optional min_confidence")
    minimum = body.get("min_confidence")
    if minimum is not None and (isinstance(minimum, bool) or not isinstance(minimum, (int, float))
                                or not 0 <= minimum <= 1):
        raise ApiError(400, "min_confidence must be a number from 0 to 1")
    with ws.lock:
        ws.refresh()
        if not ws.ann.named:
            raise ApiError(409, "no face is named yet: name a person first, then export")
        if updater.job.state == "running":
            raise ApiError(409, "an update is running; export when it is done")
        if ws.result is None or ws.result_version != ws.applied:
            updater.ws_name(copy.deepcopy(ws.ann), ws.labels.copy(), ws.applied)
        out = ws.sources.app / "dataset"
        try:
            summary = export_dataset(ws.sources.manifest, ws.sources.app / "names.csv", out,
                                     min_confidence=minimum, overwrite=True, progress=False)
        except ProxytasksError as e:
            raise ApiError(409, str(e)) from None
    return {"ok": True, "folder": str(Path(out)), **summary}
