"""k-means: same clustering as scikit-learn from the same initial centres; k-means++ seeding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans

from slot_jax.evaluation.kmeans import assign, kmeans, kmeans_plusplus, lloyd


def blobs(n=600, d=8, k=6, seed=0, spread=1.0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, (k, d))
    return (centres[rng.integers(0, k, n)] + rng.normal(0, spread, (n, d))).astype(np.float32)


@pytest.mark.parametrize("seed, k, spread", [(0, 6, 1.0), (1, 10, 3.0), (2, 4, 6.0)])
def test_lloyd_matches_sklearn_from_the_same_initial_centres(seed, k, spread):
    x = blobs(seed=seed, k=6, spread=spread)
    init = x[np.random.default_rng(seed).choice(len(x), k, replace=False)]
    ours = lloyd(jnp.asarray(x), jnp.asarray(init), max_iter=300, tol=1e-4)
    reference = KMeans(k, init=init, n_init=1, algorithm="lloyd", max_iter=300, tol=1e-4).fit(x)
    np.testing.assert_allclose(float(ours.inertia), reference.inertia_, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(ours.labels), reference.labels_)
    np.testing.assert_allclose(ours.centres, reference.cluster_centers_, rtol=1e-4, atol=1e-4)


def test_inertia_is_the_sum_of_squared_distances_to_the_assigned_centre():
    x = blobs(seed=3)
    result = kmeans(x, 5, jax.random.PRNGKey(0), num_restarts=2)
    expected = sum(np.sum((x[i] - np.asarray(result.centres)[l]) ** 2) for i, l in enumerate(np.asarray(result.labels)))
    np.testing.assert_allclose(float(result.inertia), expected, rtol=1e-4)
    labels, _ = assign(jnp.asarray(x), result.centres)
    np.testing.assert_array_equal(labels, result.labels)  # labels belong to the final centres


def test_empty_cluster_takes_the_farthest_point():
    x = np.array([[0.0], [0.1], [0.2], [10.0]], np.float32)
    init = np.array([[0.1], [100.0], [10.0]], np.float32)  # the centre at 100 attracts nothing
    result = lloyd(jnp.asarray(x), jnp.asarray(init), max_iter=10)
    reference = KMeans(3, init=init, n_init=1, max_iter=10).fit(x)
    np.testing.assert_allclose(float(result.inertia), reference.inertia_, rtol=1e-5, atol=1e-6)
    assert np.all(np.bincount(np.asarray(result.labels), minlength=3) > 0)


def test_kmeans_plusplus_picks_distinct_data_points_spread_over_the_blobs():
    x = blobs(k=6, spread=0.1, seed=4)
    centres = np.asarray(kmeans_plusplus(jnp.asarray(x), jax.random.PRNGKey(0), 6))
    rows = {tuple(c) for c in centres}
    assert len(rows) == 6 and rows <= {tuple(p) for p in x}
    truth = KMeans(6, n_init=10, random_state=0).fit(x)
    assert len(set(truth.predict(centres))) == 6  # one seed per well-separated blob


def test_restarts_keep_the_lowest_inertia_and_are_deterministic():
    x = blobs(k=8, spread=2.0, seed=5)
    one = kmeans(x, 8, jax.random.PRNGKey(1), num_restarts=1)
    many = kmeans(x, 8, jax.random.PRNGKey(1), num_restarts=6)
    again = kmeans(x, 8, jax.random.PRNGKey(1), num_restarts=6)
    assert float(many.inertia) <= float(one.inertia) + 1e-3
    np.testing.assert_array_equal(many.labels, again.labels)


@pytest.mark.parametrize("x, k, message", [
    (np.zeros((5,)), 2, r"\[N, D\]"), (np.zeros((3, 2)), 4, "1 <= k"), (np.full((4, 2), np.nan), 2, "NaN")])
def test_bad_input_is_refused(x, k, message):
    with pytest.raises(ValueError, match=message):
        kmeans(x, k, jax.random.PRNGKey(0))
