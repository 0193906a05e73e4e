"""The exact set of examples an evaluation ran on, so that numbers computed on different sets are never
combined (a certified accuracy on 1,000 images is no lower bound for attack results on 300).

An example set is identified by its ``id``: its size, the SHA-256 of its indices into the split and the
SHA-256 of its inputs and labels (the same indices of another data set are another set).
"""
from __future__ import annotations

import hashlib

import jax
import numpy as np

DIGEST_CHARS = 16  # hex characters of a digest kept in a report
LISTED_INDICES = 20  # at most this many indices are written out in a description


def digest(tree) -> str:
    """A SHA-256 hex digest of the arrays of a pytree (a model's variables, or inputs and labels)."""
    hasher = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        hasher.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    return hasher.hexdigest()


def describe_indices(indices: np.ndarray, split: str) -> str:
    """``'the first 300 examples of the test split'`` for ``0 .. 299``, else the indices themselves (the
    first `LISTED_INDICES` of them)."""
    indices = np.asarray(indices)
    if np.array_equal(indices, np.arange(len(indices))):
        return f"the first {len(indices)} examples of the {split} split"
    shown = ", ".join(str(int(i)) for i in indices[:LISTED_INDICES])
    more = f", ... ({len(indices)} in all)" if len(indices) > LISTED_INDICES else ""
    return f"examples {shown}{more} of the {split} split"


def example_set(indices, x, y, *, split: str = "test") -> dict:
    """The JSON record of the examples ``x[i], y[i]`` taken at ``indices`` of ``split``:
    ``{'id', 'count', 'description', 'indices_digest', 'data_digest'}``."""
    indices = np.asarray(indices, np.int64)
    if len(indices) != len(x) or len(x) != len(y):
        raise ValueError(f"{len(indices)} indices for {len(x)} inputs and {len(y)} labels")
    indices_digest = hashlib.sha256(indices.tobytes()).hexdigest()[:DIGEST_CHARS]
    data_digest = digest((np.asarray(x), np.asarray(y)))[:DIGEST_CHARS]
    return {"id": f"{split}-{len(indices)}-{indices_digest[:8]}{data_digest[:8]}", "count": int(len(indices)),
            "description": describe_indices(indices, split), "split": split, "indices_digest": indices_digest,
            "data_digest": data_digest}


def first_examples(x, y, limit: int | None, *, split: str = "test"):
    """The first ``limit`` examples (all for 0 or None) and their example set: ``(x, y, record)``."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 0):
        raise ValueError(f"limit must be an integer >= 0 (0: all examples), got {limit!r}")
    count = len(x) if not limit else min(int(limit), len(x))
    x, y = np.asarray(x[:count]), np.asarray(y[:count])
    return x, y, example_set(np.arange(count), x, y, split=split)
