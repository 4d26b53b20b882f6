"""Training checkpoints (``RUN/checkpoint.pt``): everything ``train --resume`` needs.

A checkpoint holds the head and optimizer states, the step, the training log, the best
head so far and the seconds of the time budget spent, loadable with
``torch.load(weights_only=True)`` (no pickled code), plus a ``header``: the model it
fits and the sha256 of the rest, so that a truncated, altered or foreign checkpoint is
refused with a message instead of resuming into nonsense.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from .embedder import Embedder
from .errors import ProxytasksError
from .fileio import atomic_write

CHECKPOINT_VERSION = 1  # of the "header" in checkpoint.pt
AFRESH = "delete it to start afresh"


def save_checkpoint(path: Path, embedder: Embedder, opt: torch.optim.Optimizer, step: int, log: list,
                    best: dict[str, Any], spent: float = 0.0) -> None:
    """Write the checkpoint of a run at ``step`` atomically.

    ``best``: ``{"score", "state", "step"}`` of the best head so far; ``spent``: seconds of
    the run's time budget used up to now (over every resumed part).
    """
    state = {"head": embedder.head.state_dict(), "optimizer": opt.state_dict(), "step": step,
             "log": json.dumps(log), "best_head": best["state"],
             "best_score": -1.0 if best["score"] is None else best["score"], "best_step": best["step"],
             "spent": float(spent)}
    state["header"] = {**checkpoint_header(embedder), "sha256": state_digest(state)}
    with atomic_write(path, "wb", gz=False) as fh:
        torch.save(state, fh)


def checkpoint_header(embedder: Embedder) -> dict[str, Any]:
    """What a checkpoint's head and optimizer fit: the model being trained."""
    return {"format_version": CHECKPOINT_VERSION, "backbone": embedder.backbone, "head": embedder.head_kind,
            "in_dim": embedder.in_dim, "dim": embedder.dim}


def state_digest(state: Any) -> str:
    """sha256 of a checkpoint's content: tensors by dtype, shape and bytes, containers in key order."""
    h = hashlib.sha256()

    def walk(x: Any) -> None:
        if isinstance(x, torch.Tensor):
            t = x.detach().cpu().contiguous().reshape(-1)
            h.update(f"tensor {t.dtype} {tuple(x.shape)}:".encode())
            h.update(t.view(torch.uint8).numpy().tobytes())
        elif isinstance(x, dict):
            h.update(b"{")
            for k in sorted(x, key=repr):
                h.update(repr(k).encode() + b":")
                walk(x[k])
            h.update(b"}")
        elif isinstance(x, (list, tuple)):
            h.update(b"[")
            for v in x:
                walk(v)
            h.update(b"]")
        else:
            h.update(repr(x).encode() + b";")

    walk(state)
    return h.hexdigest()


def read_checkpoint(path: Path, embedder: Embedder) -> dict[str, Any]:
    """The checkpoint at ``path``, checked against its header, and the header against ``embedder``.

    Raises:
        ProxytasksError: naming the file, when it cannot be read (truncated, pickled code ...),
            has no header (an older proxytasks), fails its checksum, or fits another model.
    """
    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # truncated file, pickled code ...
        raise ProxytasksError(f"{path}: cannot resume from this checkpoint ({type(e).__name__}: "
                              f"{str(e)[:200]}); {AFRESH}") from None
    header = state.get("header") if isinstance(state, dict) else None
    if not isinstance(header, dict) or header.get("format_version") != CHECKPOINT_VERSION:
        raise ProxytasksError(f"{path}: cannot resume from this checkpoint: it has no header of format "
                              f"{CHECKPOINT_VERSION} (written by an older proxytasks?); {AFRESH}")
    if state_digest({k: v for k, v in state.items() if k != "header"}) != header.get("sha256"):
        raise ProxytasksError(f"{path}: cannot resume from this checkpoint: its content does not match the "
                              f"sha256 in its header (corrupt or altered); {AFRESH}")
    want = checkpoint_header(embedder)
    if any(header.get(k) != v for k, v in want.items()):
        def describe(h: dict[str, Any]) -> str:
            return f"{h.get('backbone')} with a {h.get('head')} head {h.get('in_dim')} -> {h.get('dim')}"

        raise ProxytasksError(f"{path}: cannot resume: the checkpoint is of {describe(header)}, this run trains "
                              f"{describe(want)}; resume with the options it was trained with, or {AFRESH}")
    return state


def restore(state: dict[str, Any], embedder: Embedder, opt: torch.optim.Optimizer, path: Path) -> dict[str, Any]:
    """Load a read checkpoint into ``embedder``'s head and ``opt``; returns the run's place:
    ``{"step", "log", "best", "spent"}``.

    Raises:
        ProxytasksError: when the head or optimizer state does not fit, despite the header.
    """
    try:
        embedder.head.load_state_dict(state["head"])
        opt.load_state_dict(state["optimizer"])
    except Exception as e:  # a head or optimizer that does not fit, despite the header
        raise ProxytasksError(f"{path}: cannot resume from this checkpoint ({type(e).__name__}: "
                              f"{str(e)[:200]}); {AFRESH}") from None
    best = {"score": None, "state": None, "step": 0}
    if "best_head" in state:
        best = {"score": state["best_score"] if state["best_score"] >= 0 else None,
                "state": state["best_head"], "step": int(state["best_step"])}
    return {"step": int(state["step"]), "log": json.loads(state["log"]), "best": best,
            "spent": float(state.get("spent", 0.0))}
