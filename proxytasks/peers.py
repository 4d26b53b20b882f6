"""The face_recognition peer: what a user of dlib / face_recognition does with the faces.

Each setting is the one its users meet first:

- Finding the face: ``face_recognition.face_encodings(image)`` calls
  ``face_locations(image)``, dlib's HOG detector upsampled once
  (``number_of_times_to_upsample=1``, ``model="hog"``), then dlib's 5-point predictor
  (``model="small"``) and ``dlib.get_face_chip`` (150x150, padding 0.25). A face given
  as ``image`` + ``bbox`` keeps its box (as ``face_encodings(image,
  known_face_locations=...)``); a face given only as a crop is found inside the crop by
  HOG, the detection nearest the crop centre kept (:mod:`proxytasks.locate`; where HOG
  finds nothing, MTCNN and then the central region, so no face is dropped and the peer
  gets the benefit of the doubt).
- Descriptors: dlib's ``face_recognition_model_v1`` (``num_jitters=1``), or its exact
  torch port (:mod:`proxytasks.dlib_resnet`).
- Clustering: ``dlib.chinese_whispers_clustering`` on Euclidean distances, at 0.5 in
  dlib's Python example (``python_examples/face_clustering.py``) and at 0.6 in its C++
  example (``examples/dnn_face_recognition_ex.cpp``): :data:`WHISPERS_THRESHOLDS`.
- Naming: the nearest named face within ``tolerance=0.6``, the default of
  ``face_recognition.compare_faces`` and the way ``face_distance`` is used in its
  examples (``examples/facerec_from_webcam_faster.py``: the best match among the known
  faces, if it matches): :func:`nearest_names`; the k-nearest-neighbour rule of
  ``examples/face_recognition_knn.py`` as a variant: :func:`knn_names`.

dlib is imported inside the functions, so proxytasks imports without it.
"""
from __future__ import annotations

import importlib.util
import logging
import math

import numpy as np
from scipy.spatial.distance import cdist
from tqdm.auto import tqdm

from .align import DLIB_PIP, DlibAligner, plan_message, predictor_path
from .dlib_resnet import PIP_INSTALL
from .errors import ProxytasksError
from .manifest import Manifest

logger = logging.getLogger(__name__)

#: dlib's same-person threshold on the Euclidean distance of descriptors
#: (``face_recognition.compare_faces``' default ``tolerance``).
THRESHOLD = 0.6
#: Chinese whispers thresholds of dlib's examples: Python ``face_clustering.py`` 0.5, C++
#: ``dnn_face_recognition_ex.cpp`` 0.6.
WHISPERS_THRESHOLDS = (0.5, 0.6)
#: Above this many faces, dlib's Chinese whispers (all pairs) gets slow.
WHISPERS_WARN = 20_000


def dlib_peer_available() -> tuple[bool, str]:
    """Whether dlib and its models are installed; when not, the pip line that is missing."""
    missing = []
    try:
        import dlib  # noqa: F401
    except ImportError as e:
        missing.append(f"dlib cannot be imported ({e}): {DLIB_PIP}")
    if importlib.util.find_spec("face_recognition_models") is None or predictor_path() is None:
        missing.append(f"dlib's model files are not installed: {PIP_INSTALL}")
    return (not missing, "; ".join(missing))


def _dlib():
    ok, reason = dlib_peer_available()
    if not ok:
        raise ProxytasksError(f"the face_recognition peer needs dlib: {reason}")
    import dlib

    return dlib


ENGINES = ("torch", "dlib")


def face_recognition_descriptors(manifest: Manifest, aligner: DlibAligner | None = None,
                                 progress: bool = True, batch_size: int = 32, engine: str = "torch") -> np.ndarray:
    """dlib's 128-d descriptor of every face, as ``face_recognition.face_encodings``.

    Faces given only as crops are first found inside their crop (dlib's HOG detector
    upsampled once, as ``face_locations``; see :mod:`proxytasks.locate`).

    Args:
        manifest: the faces.
        aligner: makes the 150x150 chips (default: a :class:`DlibAligner`); its
            ``locations`` hold the faces found in crops afterwards.
        progress: show a progress bar.
        batch_size: chips per forward pass.
        engine: ``"dlib"`` runs dlib's own ``compute_face_descriptor``; ``"torch"`` the
            same network read from the same file (:mod:`proxytasks.dlib_resnet`), whose
            descriptors equal dlib's (cosine above 0.99999, tested) at several times the
            speed on a CPU (bench/dlib_descriptors.py).

    Returns:
        (N, 128) float32, in manifest order; no face is dropped.

    Raises:
        ProxytasksError: dlib or its models are missing, or a face's image is unreadable.
    """
    import timm

    from .dlib_resnet import dlib_model_path

    if engine not in ENGINES:
        raise ProxytasksError(f"unknown descriptor engine {engine!r}: choose {' or '.join(ENGINES)}")
    dlib = _dlib()
    aligner = aligner or DlibAligner()
    aligner.prepare(manifest, progress=progress)
    logger.info("face_recognition peer: %s", plan_message(aligner.plan(manifest)))
    if engine == "dlib":
        describe = dlib.face_recognition_model_v1(str(dlib_model_path())).compute_face_descriptor
    else:
        describe = timm.create_model("dlib_resnet29", pretrained=True).eval().describe
    out = np.zeros((len(manifest), 128), dtype=np.float32)
    with tqdm(total=len(manifest), desc="dlib descriptors", unit="face",
              disable=not progress) as bar:
        for start in range(0, len(manifest), batch_size):
            faces = manifest.faces[start:start + batch_size]
            chips = [np.ascontiguousarray(np.asarray(aligner(manifest, f)))
                     for f in faces]
            vectors = describe(np.stack(chips) if engine == "torch" else chips)
            out[start:start + len(faces)] = np.array([np.array(v) for v in vectors])
            bar.update(len(faces))
    return out


def chinese_whispers(descriptors: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """Cluster descriptors with ``dlib.chinese_whispers_clustering``.

    Faces closer than ``threshold`` (Euclidean) are linked: 0.5 in dlib's Python example
    ``face_clustering.py``, 0.6 in its C++ example ``dnn_face_recognition_ex.cpp``. dlib compares all pairs: fine for a few thousand
    faces, slow beyond some tens of thousands (a warning is logged above 20,000).

    Returns:
        (N,) int64 cluster labels.
    """
    descriptors = np.asarray(descriptors, dtype=np.float64)
    if descriptors.ndim != 2:
        raise ProxytasksError(f"chinese_whispers: descriptors must be (N, D), got shape "
                              f"{descriptors.shape}")
    if len(descriptors) == 0:
        return np.zeros(0, dtype=np.int64)
    dlib = _dlib()
    if len(descriptors) > WHISPERS_WARN:
        n = len(descriptors)
        logger.warning("chinese_whispers: %d faces; dlib compares all %d pairs, this may take "
                       "a long time", n, n * (n - 1) // 2)
    labels = dlib.chinese_whispers_clustering([dlib.vector(row.tolist()) for row in descriptors],
                                              float(threshold))
    return np.asarray(labels, dtype=np.int64)


def nearest_names(descriptors: np.ndarray, named: dict[int, str], tolerance: float = THRESHOLD,
                  chunk: int = 4096) -> list[str | None]:
    """Name each face after the nearest named face, if it is within ``tolerance``.

    How face_recognition's users name faces: ``face_distance(known_encodings, face)``,
    the best (smallest) distance taken, and ``compare_faces``' ``tolerance=0.6`` decides
    whether it is a match (``examples/facerec_from_webcam_faster.py``). Ties go to the
    named face that comes first. Named faces keep their own name; a face with no named
    face within ``tolerance`` is unknown (None).

    Args:
        descriptors: (N, D) face descriptors.
        named: face index -> name, the names given.
        tolerance: largest Euclidean distance of a match.
        chunk: faces compared at a time (bounds memory at chunk x len(named)).
    """
    x, train = _check_named(descriptors, named, "nearest_names")
    out: list[str | None] = [None] * len(x)
    if not len(train):
        return out
    names = [named[int(i)] for i in train]
    ref = x[train]
    for start in range(0, len(x), chunk):
        dist = cdist(x[start:start + chunk], ref)
        best = dist.argmin(axis=1)
        for j, b in enumerate(best):
            if dist[j, b] <= tolerance:
                out[start + j] = names[b]
    for i, name in named.items():
        out[i] = name
    return out


def _check_named(descriptors: np.ndarray, named: dict[int, str], who: str) -> tuple[np.ndarray, np.ndarray]:
    """(descriptors as float64, sorted named indices), checked."""
    x = np.asarray(descriptors, dtype=np.float64)
    if x.ndim != 2:
        raise ProxytasksError(f"{who}: descriptors must be (N, D), got shape {x.shape}")
    bad = [i for i in named if not 0 <= i < len(x)]
    if bad:
        raise ProxytasksError(f"{who}: named face index {bad[0]} is outside 0..{len(x) - 1}")
    if not named:
        logger.warning("%s: no named face; every face is unknown", who)
    return x, np.array(sorted(named), dtype=np.int64)


def knn_names(descriptors: np.ndarray, named: dict[int, str], threshold: float = THRESHOLD,
              chunk: int = 4096) -> list[str | None]:
    """Name faces by face_recognition's k-nearest-neighbour example.

    The rule of ``examples/face_recognition_knn.py`` (scikit-learn's
    ``KNeighborsClassifier(n_neighbors, weights='distance')``): the named faces are the
    training set; ``k = round(sqrt(len(named)))`` (at least 1); each of the k nearest
    named faces votes with weight 1 / distance (a named face at distance 0 takes the
    whole vote, shared with any others at distance 0); the name with the largest summed
    weight wins (a tie goes to the name that sorts first, as scikit-learn's sorted
    classes); a face whose nearest named face is farther than ``threshold`` is unknown
    (None). Named faces keep their own name.

    Args:
        descriptors: (N, D) face descriptors.
        named: face index -> name, the names given.
        threshold: largest Euclidean distance to the nearest named face for a name.
        chunk: faces compared at a time (bounds memory at chunk x len(named)).

    Returns:
        A name or None per face.
    """
    x, train = _check_named(descriptors, named, "knn_names")
    out: list[str | None] = [None] * len(x)
    if not len(train):
        return out
    classes, codes = np.unique(np.array([str(named[int(i)]) for i in train]), return_inverse=True)
    k = max(1, int(round(math.sqrt(len(train)))))
    ref = x[train]
    for start in range(0, len(x), chunk):
        q = x[start:start + chunk]
        dist = cdist(q, ref)
        near = np.argsort(dist, axis=1, kind="stable")[:, :k]
        nd = np.take_along_axis(dist, near, axis=1)
        with np.errstate(divide="ignore"):
            weights = 1.0 / nd
        exact = np.isinf(weights)
        rows = exact.any(axis=1)
        weights[rows] = exact[rows]
        votes = np.zeros((len(q), len(classes)))
        np.add.at(votes, (np.arange(len(q))[:, None], codes[near]), weights)
        best = votes.argmax(axis=1)
        for j in range(len(q)):
            if nd[j, 0] <= threshold:
                out[start + j] = str(classes[best[j]])
    for i, name in named.items():
        out[i] = name
    return out
