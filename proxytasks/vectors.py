"""Small array helpers that many stages share: unit vectors and connected components."""
from __future__ import annotations

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

EPS = 1e-12


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = EPS) -> np.ndarray:
    """``x`` scaled to unit L2 norm along ``axis``; an all-zero vector stays zero."""
    x = np.asarray(x)
    return x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), eps)


def components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The connected-component label of each of ``n`` nodes linked by the edges ``a[k]-b[k]``
    (labels 0..C-1; a node without edges is a component of its own)."""
    a = np.asarray(a, dtype=np.int64).reshape(-1)
    b = np.asarray(b, dtype=np.int64).reshape(-1)
    graph = coo_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(n, n))
    return connected_components(graph, directed=False)[1].astype(np.int64)
