"""FID/KID API and command line: inputs, statistics caching, errors, and running without torch."""
import dataclasses
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from conftest import REPO, random_inception_variables, save_inception_pth
from slot_jax.evaluation import fid as fid_lib
from slot_jax.evaluation import fid_score
from slot_jax.evaluation.fid_score import FIDInputError, Statistics, as_uint8_images, load_images


@pytest.fixture(scope="module")
def variables():
    return random_inception_variables()


@pytest.fixture(scope="module")
def extractor(variables):
    return fid_score.FeatureExtractor("clean", batch_size=4, variables=variables)


def images(n, seed, size=32):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- inputs


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 8, 8, 3), np.int32), "uint8 in \\[0, 255\\] or float in \\[0, 1\\]"),
    (np.full((2, 8, 8, 3), 2.0, np.float32), "must lie in \\[0, 1\\]"),
    (np.zeros((2, 8, 8, 4), np.uint8), "RGB images"),
    (np.zeros((8, 8, 3), np.uint8), "RGB images"),
    (np.full((2, 8, 8, 3), np.nan, np.float32), "NaN"),
])
def test_bad_image_arrays_are_refused(array, message):
    with pytest.raises(FIDInputError, match=message):
        as_uint8_images(array)


def test_float_images_in_the_unit_interval_are_rounded_to_uint8():
    np.testing.assert_array_equal(as_uint8_images(np.full((1, 1, 1, 3), 0.5, np.float32)), [[[[128] * 3]]])


def test_folders_load_sorted_as_rgb_and_bad_folders_are_refused(tmp_path):
    Image.fromarray(np.full((6, 6), 200, np.uint8)).save(tmp_path / "b.png")  # greyscale
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(tmp_path / "a.png")
    loaded = load_images(tmp_path)
    assert loaded.shape == (2, 6, 6, 3) and loaded[0].max() == 0 and loaded[1].min() == 200
    (tmp_path / "empty").mkdir()
    with pytest.raises(FIDInputError, match="no .*images in this folder"):
        load_images(tmp_path / "empty")
    Image.fromarray(np.zeros((7, 6, 3), np.uint8)).save(tmp_path / "c.png")
    with pytest.raises(FIDInputError, match="different sizes"):
        load_images(tmp_path)
    (tmp_path / "c.png").write_bytes(b"broken")
    with pytest.raises(FIDInputError, match="unreadable image"):
        load_images(tmp_path)


def test_npz_sources(tmp_path):
    np.savez(tmp_path / "ok.npz", images=images(3, 0))
    assert load_images(tmp_path / "ok.npz").shape == (3, 32, 32, 3)
    np.savez(tmp_path / "other.npz", pictures=images(3, 0))
    with pytest.raises(FIDInputError, match="no 'images' array"):
        load_images(tmp_path / "other.npz")
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 truncated")
    with pytest.raises(FIDInputError, match="unreadable npz"):
        load_images(tmp_path / "bad.npz")
    with pytest.raises(FIDInputError, match="not a folder of images or an .npz"):
        load_images(tmp_path / "missing.png")


# ----------------------------------------------------------------------------- statistics


def test_padded_batches_give_the_features_of_each_image(extractor):
    batch = images(5, 1)  # batch_size 4: one full batch and one padded
    together = extractor(batch)
    alone = np.concatenate([extractor(batch[i:i + 1]) for i in (0, 4)])
    np.testing.assert_allclose(together[[0, 4]], alone, rtol=1e-4, atol=1e-4)


def test_statistics_are_cached_reused_and_never_reused_across_modes_or_sizes(extractor, tmp_path, monkeypatch):
    cache = tmp_path / "stats.npz"
    first = fid_score.source_statistics(images(4, 2), extractor, cache=cache)
    assert cache.is_file()
    calls = []
    monkeypatch.setattr(extractor, "statistics", lambda *a, **k: calls.append(1))
    again = fid_score.source_statistics(images(4, 2), extractor, cache=cache)
    assert not calls
    np.testing.assert_array_equal(again.mu, first.mu)
    before = cache.read_bytes()
    with pytest.raises(FIDInputError, match="mode 'clean' at 32x32, not 'clean' at 16x16"):
        fid_score.source_statistics(images(4, 2, size=16), extractor, cache=cache)
    legacy = fid_score.FeatureExtractor("legacy_pytorch", variables=extractor.variables)
    with pytest.raises(FIDInputError, match="not 'legacy_pytorch'"):
        fid_score.source_statistics(images(4, 2), legacy, cache=cache)
    with pytest.raises(FIDInputError, match="of 4 images, this source has 5"):
        fid_score.source_statistics(images(5, 2), extractor, cache=cache)
    assert cache.read_bytes() == before


def test_fewer_than_two_images_cache_nothing(extractor, tmp_path):
    with pytest.raises(FIDInputError, match="at least 2 images"):
        fid_score.source_statistics(images(1, 0), extractor, cache=tmp_path / "s.npz")
    assert not (tmp_path / "s.npz").exists()


def test_scores_are_the_frechet_distance_and_kid_of_the_features():
    # Small feature dimension: a 2048-d sqrtm takes ~10 s here, and scores() does not care.
    rng = np.random.default_rng(0)
    fa, fb = rng.normal(size=(30, 8)), rng.normal(1.0, 2.0, size=(30, 8))
    a, b = (Statistics(*fid_lib.feature_statistics(f), "clean", (32, 32), 30, f) for f in (fa, fb))
    result = fid_score.scores(a, b)
    assert result["fid"] == pytest.approx(fid_lib.frechet_distance(a.mu, a.sigma, b.mu, b.sigma))
    assert result["kid"] == pytest.approx(fid_lib.kernel_inception_distance(fa, fb))
    assert "kid" not in fid_score.scores(a, b, kid=False)
    with pytest.raises(FIDInputError, match="different modes"):
        fid_score.scores(a, Statistics(b.mu, b.sigma, "legacy_pytorch", b.image_size, 30))


def test_unknown_mode_is_refused(variables):
    with pytest.raises(FIDInputError, match="choose one of clean, legacy_pytorch"):
        fid_score.FeatureExtractor("tensorflow", variables=variables)


# ----------------------------------------------------------------------------- command line


def run_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "slot_jax.fid", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=600, env={**os.environ, **(env or {})})


def test_cli_scores_two_sets_and_saves_their_statistics(variables, tmp_path):
    weights = save_inception_pth(variables, tmp_path / "weights.pth")
    np.savez(tmp_path / "a.npz", images=images(4, 5))
    Image.fromarray(images(1, 6)[0]).save(tmp_path / "b0.png")  # B is a folder
    Image.fromarray(images(1, 7)[0]).save(tmp_path / "b1.png")
    (tmp_path / "b").mkdir()
    for name in ("b0.png", "b1.png"):
        (tmp_path / name).rename(tmp_path / "b" / name)
    out = tmp_path / "scores.json"
    result = run_cli(tmp_path / "a.npz", tmp_path / "b", "--weights", weights, "--batch_size", 4,
                     "--save_stats_a", tmp_path / "a_stats.npz", "--save_stats_b", tmp_path / "b_stats.npz",
                     "--out", out)
    assert result.returncode == 0, result.stderr
    scores = json.loads(out.read_text())
    assert "FID (clean):" in result.stdout and "KID:" in result.stdout and scores["num_images"] == [4, 2]
    a, b = Statistics.load(tmp_path / "a_stats.npz"), Statistics.load(tmp_path / "b_stats.npz")
    features = fid_score.FeatureExtractor("clean", batch_size=4, variables=variables)(images(4, 5))
    np.testing.assert_allclose(a.mu, features.mean(axis=0), rtol=1e-4, atol=1e-5)  # the weights file was used
    assert scores["fid"] == pytest.approx(fid_lib.frechet_distance(a.mu, a.sigma, b.mu, b.sigma), rel=1e-9)
    wrong_mode = run_cli(tmp_path / "a_stats.npz", tmp_path / "b", "--weights", weights, "--mode",
                         "legacy_pytorch", "--out", out)
    assert wrong_mode.returncode == 2 and "holds statistics for mode 'clean'" in wrong_mode.stderr
    assert json.loads(out.read_text()) == scores  # the failed run left the old result


@pytest.mark.parametrize("setup, message", [
    ("missing_weights", "not found"), ("truncated_weights", "weights"), ("empty_folder", "no .* images")])
def test_cli_bad_input_is_one_line_and_exit_2_and_writes_nothing(setup, message, tmp_path):
    np.savez(tmp_path / "a.npz", images=images(3, 0))
    (tmp_path / "empty").mkdir()
    weights = tmp_path / "weights.pth"
    if setup == "truncated_weights":
        weights.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    b = tmp_path / ("empty" if setup == "empty_folder" else "a.npz")
    if setup == "empty_folder":
        weights = save_inception_pth(random_inception_variables(), weights)
    result = run_cli(tmp_path / "a.npz", b, "--weights", weights, "--out", tmp_path / "out.json",
                     env={"SLOT_JAX_INCEPTION_WEIGHTS": ""})
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and __import__("re").search(message, lines[0])
    assert "writable" not in lines[0]  # the fix named is the one for this problem
    assert not (tmp_path / "out.json").exists()


def test_cli_compares_two_statistics_files_without_weights_and_refuses_corrupt_ones(tmp_path):
    rng = np.random.default_rng(0)
    stats = {}
    for name, shift in (("a", 0.0), ("b", 0.5)):
        features = rng.normal(shift, 1.0, size=(40, 16))
        stats[name] = Statistics(features.mean(axis=0), np.cov(features, rowvar=False), "clean", (32, 32), 40)
        stats[name].save(tmp_path / f"{name}.npz")
    corrupt = dataclasses.replace(stats["b"], sigma=stats["b"].sigma + np.triu(np.ones((16, 16)), 1))
    corrupt.save(tmp_path / "corrupt.npz")
    env = {"SLOT_JAX_INCEPTION_WEIGHTS": "", "HOME": str(tmp_path / "home")}  # no weights anywhere
    out = tmp_path / "scores.json"
    result = run_cli(tmp_path / "a.npz", tmp_path / "b.npz", "--out", out, env=env)
    assert result.returncode == 0, result.stderr
    want = fid_lib.frechet_distance(stats["a"].mu, stats["a"].sigma, stats["b"].mu, stats["b"].sigma)
    assert json.loads(out.read_text())["fid"] == pytest.approx(want, rel=1e-12)
    result = run_cli(tmp_path / "a.npz", tmp_path / "corrupt.npz", "--out", out, env=env)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "not a symmetric covariance" in lines[0], result.stderr
    assert json.loads(out.read_text())["fid"] == pytest.approx(want, rel=1e-12)  # the old result is kept


# ----------------------------------------------------------------------------- no torch


def test_evaluation_runs_with_torch_blocked():
    code = """
import sys
sys.modules['torch'] = None  # any `import torch` now fails
sys.path.insert(0, 'tests')
import jax, numpy as np
from conftest import random_inception_variables
from slot_jax.evaluation import composition, fid_score, kmeans, segmentation
x = np.random.default_rng(0).normal(size=(50, 3, 4)).astype(np.float32)
library = composition.build_slot_library(x, 4, jax.random.PRNGKey(0), num_restarts=1)
composition.sample_slot_sets(library, 3, jax.random.PRNGKey(1))
ids = np.random.default_rng(0).integers(0, 3, (2, 8, 8))
segmentation.ari_numpy(ids, ids, num_pred=3, num_true=3); segmentation.miou(ids, ids, num_pred=3, num_true=3)
extractor = fid_score.FeatureExtractor('clean', batch_size=2, variables=random_inception_variables())
images = np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
a, b = extractor.statistics(images), extractor.statistics(images[::-1])
small = [fid_score.Statistics(*fid_score.fid_lib.feature_statistics(s.features[:, :16]), 'clean', (16, 16), 3,
                              s.features[:, :16]) for s in (a, b)]  # a 2048-d sqrtm takes ~10 s
print(fid_score.scores(*small))
assert sys.modules['torch'] is None
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
