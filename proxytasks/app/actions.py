"""The app's actions: check a request, turn it into round-file rows, append them.

Each action is checked against the folder as it is on disk at that moment (the
workspace takes in other tabs' and servers' files first, under the folder's lock), so a
bad request answers an :class:`~proxytasks.app.state.ApiError` and writes nothing.
Undo appends the reverse of the last action not yet undone, in the same formats: a name
a face gets back, or takes back (``not_name``: the face is not that person), an answer
flipped; the clusters it reshaped return to what they were.
"""
from __future__ import annotations

import unicodedata
from typing import Any

import numpy as np

from ..export import safe_name
from ..naming import Annotations
from .rounds import Round
from .state import ApiError, Workspace

MAX_NAME = 200
MAX_FACES = 100_000
ANSWERS = ("same", "different")


def _object(body: Any, keys: set[str]) -> dict:
    if not isinstance(body, dict):
        raise ApiError(400, "the body must be a JSON object")
    unknown = sorted(set(body) - keys)
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}; expected {', '.join(sorted(keys))}")
    return body


def check_name(value: Any) -> str:
    """A name a person typed: a non-empty line of text usable as an export folder."""
    if not isinstance(value, str):
        raise ApiError(400, "name must be a string")
    name = unicodedata.normalize("NFC", value).strip()
    if not name:
        raise ApiError(400, "name is empty: type a name")
    if len(name) > MAX_NAME:
        raise ApiError(400, f"name is longer than {MAX_NAME} characters")
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        raise ApiError(400, "name holds a control character or a line break")
    if not safe_name(name):
        raise ApiError(400, f"name {name!r} leaves nothing usable as a folder name; use letters or digits")
    return name


def check_faces(ws: Workspace, value: Any, at_least: int = 1) -> list[int]:
    """Face indices of a list of ids of the manifest (each id looked up, never a path)."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ApiError(400, "faces must be a list of face ids (strings)")
    if len(value) > MAX_FACES:
        raise ApiError(400, f"at most {MAX_FACES} faces at once")
    unknown = [v for v in value if v not in ws.index]
    if unknown:
        raise ApiError(404, f"no face {unknown[0]!r} in the manifest" + (
            f" (and {len(unknown) - 1} more)" if len(unknown) > 1 else ""))
    faces = list(dict.fromkeys(ws.index[v] for v in value))
    if len(faces) < at_least:
        raise ApiError(400, f"give at least {at_least} distinct face(s)")
    return faces


def _commit(ws: Workspace, build) -> tuple[Round, Any]:
    """Under the folder's lock: take in other writers' files, check and build the rows
    (``build`` returns ``(action, rows, answer)``), append them, take them in."""
    with ws.lock, ws.log.locked():
        ws.refresh()
        action, rows, answer = build()
        r = ws.log.append(action, rows)
        ws.refresh()
        ws.write_labels()
        return r, answer


def _done(ws: Workspace, r: Round, **extra: Any) -> dict:
    return {"ok": True, "seq": r.seq, "file": str(r.path.relative_to(ws.folder)), **extra}


def name(ws: Workspace, body: Any) -> dict:
    """``{"cluster": C, "name": S}`` or ``{"faces": [ids], "name": S}``."""
    body = _object(body, {"cluster", "faces", "name"})
    if ("cluster" in body) == ("faces" in body):
        raise ApiError(400, "give either cluster or faces, with name")
    text = check_name(body.get("name"))

    def build():
        if "cluster" in body:
            c = int(ws.labels[ws.cluster_members(body["cluster"])[0]])
            return "name-cluster", [{"cluster": str(c), "name": text}], {"cluster": c}
        faces = check_faces(ws, body["faces"])
        return "name", [{"id": ws.ids[i], "name": text} for i in faces], {"faces": len(faces)}

    r, extra = _commit(ws, build)
    return _done(ws, r, name=text, **extra)


def not_name(ws: Workspace, body: Any) -> dict:
    """``{"faces": [ids], "name": S}``: these faces are not S."""
    body = _object(body, {"faces", "name"})
    text = check_name(body.get("name"))

    def build():
        faces = check_faces(ws, body.get("faces"))
        return "not", [{"id": ws.ids[i], "not_name": text} for i in faces], None

    return _done(ws, _commit(ws, build)[0])


def merge(ws: Workspace, body: Any) -> dict:
    """``{"clusters": [a, b, ...]}``: one person; the others join the first."""
    body = _object(body, {"clusters"})
    clusters = body.get("clusters")
    if not isinstance(clusters, list) or len(clusters) < 2:
        raise ApiError(400, "clusters must be a list of two (or more) cluster ids")

    def build():
        groups = [ws.cluster_members(c) for c in clusters]
        ids = [int(ws.labels[g[0]]) for g in groups]
        if len(set(ids)) != len(ids):
            raise ApiError(400, "merge needs distinct clusters")
        reps = [ws.central(g)[0] for g in groups]
        rows = [{"id": ws.ids[reps[0]], "id2": ws.ids[r], "answer": "same"} for r in reps[1:]]
        return "merge", rows, ids[0]

    r, into = _commit(ws, build)
    return _done(ws, r, cluster=into)


def split(ws: Workspace, body: Any) -> dict:
    """``{"faces": [ids]}``: these faces leave their cluster (together, as a new one)."""
    body = _object(body, {"faces"})

    def build():
        faces = check_faces(ws, body.get("faces"))
        clusters = set(ws.labels[faces].tolist())
        if len(clusters) != 1:
            raise ApiError(400, f"split takes faces of one cluster; these are in {len(clusters)}")
        members = np.flatnonzero(ws.labels == ws.labels[faces[0]])
        rest = np.setdiff1d(members, faces)
        if not len(rest):
            raise ApiError(400, "these are all the faces of the cluster: select the ones that leave it")
        anchor = ws.ids[ws.central(rest)[0]]
        return "split", [{"id": ws.ids[i], "id2": anchor, "answer": "different"} for i in faces], faces[0]

    r, first = _commit(ws, build)
    return _done(ws, r, cluster=int(ws.labels[first]))


def answer(ws: Workspace, body: Any) -> dict:
    """``{"faces": [a, b], "answer": "same" | "different"}``: a "same person?" question."""
    body = _object(body, {"faces", "answer"})
    said = body.get("answer")
    if said not in ANSWERS:
        raise ApiError(400, "answer must be 'same' or 'different'")

    def build():
        faces = check_faces(ws, body.get("faces"), at_least=2)
        if len(faces) != 2:
            raise ApiError(400, "an answer is about exactly two faces")
        return "answer", [{"id": ws.ids[faces[0]], "id2": ws.ids[faces[1]], "answer": said}], None

    r, _ = _commit(ws, build)
    return _done(ws, r, clusters=sorted({int(ws.labels[ws.index[f]]) for f in body["faces"]}))


def reverse_rows(ws: Workspace, before: Annotations, after: Annotations) -> list[dict[str, str]]:
    """Rows that take ``after`` back to ``before`` (as far as the formats can say)."""
    rows: list[dict[str, str]] = []
    renamed = set()
    for i in sorted(set(before.named) | set(after.named)):
        was, now = before.named.get(i), after.named.get(i)
        if was != now:
            renamed.add(i)
            rows.append({"id": ws.ids[i], "name": was} if was is not None else
                        {"id": ws.ids[i], "not_name": now})
    for i in sorted(after.forbidden):
        for lost in sorted(after.forbidden[i] - before.forbidden.get(i, set())):
            if i not in renamed and after.named.get(i) is None:
                renamed.add(i)
                rows.append({"id": ws.ids[i], "name": lost})  # the removal taken back
    for pairs, flipped in ((after.same - before.same, "different"), (after.different - before.different, "same")):
        for a, b in sorted(pairs):
            rows.append({"id": ws.ids[a], "id2": ws.ids[b], "answer": flipped})
    return rows


def undo(ws: Workspace, body: Any) -> dict:
    """Append the reverse of the last action not undone yet."""
    _object(body if body is not None else {}, set())

    def build():
        rounds = ws.log.rounds()
        target = next((r for r in reversed(rounds) if r.kind != "undo" and r.seq not in ws.undone), None)
        if target is None:
            raise ApiError(409, "nothing to undo: no action of the app is left")
        before, _, _ = ws.replay([r for r in rounds if r.seq < target.seq])
        after, _, _ = ws.replay([r for r in rounds if r.seq <= target.seq])
        return f"undo {target.seq}", reverse_rows(ws, before, after), target

    r, target = _commit(ws, build)
    return _done(ws, r, undone=target.seq, action=target.action)
