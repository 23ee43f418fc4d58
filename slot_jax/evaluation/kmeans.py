"""k-means in JAX: k-means++ seeding, Lloyd iterations, several restarts.

Lloyd follows scikit-learn's `KMeans(algorithm="lloyd")` so that, from the same initial centres,
both reach the same clustering:
- stop when the assignments no longer change, or when the summed squared centre shift is at
  most `tol * mean per-feature variance of the data`, or after `max_iter` iterations;
- after stopping, points are assigned once more to the final centres and the inertia (sum of
  squared distances to the assigned centre) is computed from that assignment;
- an empty cluster takes the point farthest from its centre, which leaves its old cluster (when
  several clusters are empty, sklearn's order among the farthest points is unspecified).

Distances use |x|^2 - 2 x.c + |c|^2 with the matmul at highest precision, as sklearn does.
Centre sums are accumulated in float32 in a different order than sklearn's, so inertias agree to
about 1e-6 relative and a point almost equidistant from two centres may be labelled differently.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


class KMeansResult(NamedTuple):
    centres: jax.Array   # [k, D]
    labels: jax.Array    # [N] int32
    inertia: jax.Array   # scalar: sum of squared distances to the assigned centre
    num_iter: jax.Array  # Lloyd iterations run


def squared_distances(x, centres, x_sq=None):
    """[N, k] squared Euclidean distances, clipped at 0 (cancellation can make them negative)."""
    x_sq = jnp.sum(x * x, axis=1, keepdims=True) if x_sq is None else x_sq
    cross = jnp.matmul(x, centres.T, precision=jax.lax.Precision.HIGHEST)
    return jnp.maximum(x_sq - 2 * cross + jnp.sum(centres * centres, axis=1), 0.0)


def assign(x, centres, x_sq=None):
    """Nearest-centre labels [N] (the first on ties, as argmin) and the squared distance to it [N]."""
    x_sq = jnp.sum(x * x, axis=1) if x_sq is None else x_sq.reshape(-1)
    # [k, N] and a running minimum over the k rows: XLA:CPU's argmin over the last axis of [N, k]
    # is several times slower than this elementwise loop.
    partial = jnp.sum(centres * centres, axis=1)[:, None] - 2 * jnp.matmul(
        centres, x.T, precision=jax.lax.Precision.HIGHEST)

    def closer(i, carry):
        best, label = carry
        better = partial[i] < best
        return jnp.where(better, partial[i], best), jnp.where(better, i, label)

    k = centres.shape[0]
    best, labels = jax.lax.fori_loop(1, k, closer, (partial[0], jnp.zeros(x.shape[0], jnp.int32)),
                                     unroll=max(1, min(k - 1, 64)))
    return labels, jnp.maximum(x_sq + best, 0.0)


@functools.partial(jax.jit, static_argnames=("k", "num_local_trials"))
def kmeans_plusplus(x, key, k: int, num_local_trials: int | None = None):
    """Greedy k-means++ seeding (Arthur & Vassilvitskii 2007, as sklearn): each new centre is the
    best of `2 + log(k)` candidates drawn proportionally to the squared distance to the nearest
    centre so far. Returns [k, D]."""
    n = x.shape[0]
    trials = num_local_trials or 2 + int(np.log(k))
    x_sq = jnp.sum(x * x, axis=1, keepdims=True)
    key, first_key = jax.random.split(key)
    first = x[jax.random.randint(first_key, (), 0, n)]
    closest = squared_distances(x, first[None], x_sq)[:, 0]
    centres = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(first)

    def add_centre(i, carry):
        centres, closest, key = carry
        key, draw_key = jax.random.split(key)
        # Inverse-CDF draws, as sklearn (searchsorted on the cumulative potential).
        cumulative = jnp.cumsum(closest)
        draws = jax.random.uniform(draw_key, (trials,), x.dtype) * cumulative[-1]
        candidates = jnp.minimum(jnp.searchsorted(cumulative, draws), n - 1)
        candidate_closest = jnp.minimum(closest[None, :], squared_distances(x, x[candidates], x_sq).T)
        best = jnp.argmin(candidate_closest.sum(axis=1))
        return centres.at[i].set(x[candidates[best]]), candidate_closest[best], key

    centres, _, _ = jax.lax.fori_loop(1, k, add_centre, (centres, closest, key))
    return centres


def _update_centres(x, labels, point_distances, k: int):
    counts = jax.ops.segment_sum(jnp.ones_like(labels, x.dtype), labels, k)
    sums = jax.ops.segment_sum(x, labels, k)

    def relocate(sums_counts):
        # sklearn's rule: the e-th empty cluster takes the e-th farthest point from its centre,
        # which leaves its old cluster.
        sums, counts = sums_counts
        empty = counts == 0
        rank = jnp.clip(jnp.cumsum(empty) - 1, 0, k - 1)
        farthest = jax.lax.top_k(point_distances, k)[1][rank]  # [k]: the point cluster c would take
        moved = jax.nn.one_hot(labels[farthest], k, dtype=x.dtype) * empty[:, None]  # [k new, k old]
        sums = sums - moved.T @ x[farthest] + empty[:, None] * x[farthest]
        return sums, counts - moved.sum(axis=0) + empty

    # Rare, and a top-k over all points costs as much as the rest of the iteration.
    sums, counts = jax.lax.cond(jnp.any(counts == 0), relocate, lambda sc: sc, (sums, counts))
    return sums / jnp.maximum(counts, 1)[:, None]


@functools.partial(jax.jit, static_argnames=("max_iter",))
def lloyd(x, centres, max_iter: int = 300, tol: float = 1e-4) -> KMeansResult:
    """Lloyd iterations from `centres` [k, D] until converged (see the module docstring)."""
    threshold = tol * jnp.mean(jnp.var(x, axis=0))
    x_sq = jnp.sum(x * x, axis=1, keepdims=True)
    labels, distances = assign(x, centres, x_sq)

    def running(carry):
        _, _, _, i, done = carry
        return (i < max_iter) & ~done

    def iterate(carry):
        centres, labels, distances, i, _ = carry
        new_centres = _update_centres(x, labels, distances, centres.shape[0])
        new_labels, new_distances = assign(x, new_centres, x_sq)
        shift = jnp.sum((new_centres - centres) ** 2)
        done = jnp.all(new_labels == labels) | (shift <= threshold)
        return new_centres, new_labels, new_distances, i + 1, done

    centres, labels, distances, num_iter, _ = jax.lax.while_loop(
        running, iterate, (centres, labels, distances, jnp.int32(0), jnp.bool_(False)))
    return KMeansResult(centres, labels, distances.sum(), num_iter)


def kmeans(x, k: int, key, num_restarts: int = 4, max_iter: int = 300, tol: float = 1e-4) -> KMeansResult:
    """Best (lowest inertia) of `num_restarts` k-means++ seeded Lloyd runs on x [N, D]."""
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"k-means needs points [N, D], got shape {x.shape}")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k-means needs 1 <= k <= number of points, got k={k} for {x.shape[0]} points")
    if not jnp.all(jnp.isfinite(x)):
        raise ValueError("k-means input holds NaN or infinite values")
    best = None
    for restart_key in jax.random.split(key, num_restarts):
        result = lloyd(x, kmeans_plusplus(x, restart_key, k), max_iter=max_iter, tol=tol)
        if best is None or float(result.inertia) < float(best.inertia):
            best = result
    return best
