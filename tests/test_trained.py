"""A trained run as a Python object (slot_jax/trained.py) and its command line
(slot_jax/decompose.py): the slots and segmentations it gives are the ones the run's own
evaluation scored; files of any size are cropped and resized; bad input is a one-line error."""
import json

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from slot_jax import decompose
from slot_jax import main as cli
from slot_jax.data.pipeline import eval_batches
from slot_jax.errors import UserError
from slot_jax.trained import _with_inference_changes, load, read_config


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    from conftest import SA_CONFIG, TINY_OVERRIDES

    workdir = tmp_path_factory.mktemp("trained") / "run"
    overrides = {**TINY_OVERRIDES, "train.num_steps": "6", "train.eval_every": "1000"}
    args = [f"--config={SA_CONFIG}:quick", f"--workdir={workdir}"] + [f"--config.{k}={v}" for k, v in overrides.items()]
    assert cli.main(args) == 0
    return workdir


def validation_set(model):
    """The images and true masks the run's evaluation scored."""
    c = model.config
    batches = list(eval_batches(model.experiment.info, "val", c.eval.num_examples, c.eval.batch_size, c.data.seed))
    return {key: np.concatenate([b[key] for b in batches])[:c.eval.num_examples] for key in ("image", "mask")}


def mean_ari(segmentation, masks):
    return np.mean([adjusted_rand_score(t.ravel(), p.ravel()) for p, t in zip(segmentation, masks)])


def test_decompose_gives_the_segmentations_the_evaluation_scored(workdir):
    model = load(workdir)
    assert model.step == 6 and model.kind == "slot_autoencoder" and model.image_size == (35, 35)
    val = validation_set(model)
    parts = model.decompose(val["image"])
    n, k = len(val["image"]), model.num_slots
    assert parts["slots"].shape == (n, k, 16) and parts["slot_images"].shape == (n, k, 35, 35, 3)
    np.testing.assert_allclose(parts["masks"].sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(parts["attention"].sum(axis=1), 1.0, atol=1e-5)
    # The run's evaluation (four devices here) against sklearn on this single-device decomposition.
    results = json.loads((workdir / "eval_results.json").read_text())
    assert mean_ari(parts["segmentation"], val["mask"]) == pytest.approx(results["val/decoder/ari"], abs=1e-4)
    assert mean_ari(parts["attention"].argmax(axis=1), val["mask"]) == pytest.approx(
        results["val/attention/ari"], abs=1e-4)
    # The decoder alone, given the slots, draws the same reconstructions.
    np.testing.assert_allclose(model.decode(parts["slots"]), np.clip(parts["recon"], 0, 1), atol=1e-5)
    # Float images in [0, 1] are the same input as uint8.
    again = model.decompose(val["image"][:3].astype(np.float32) / 255)
    np.testing.assert_allclose(again["slots"], parts["slots"][:3], atol=1e-5)


def test_slot_attention_runs_with_other_slot_and_iteration_counts(workdir):
    base = load(workdir)
    images = validation_set(base)["image"][:4]
    more = load(workdir, num_slots=7, num_iterations=5).decompose(images)
    assert more["slots"].shape == (4, 7, 16) and more["masks"].shape == (4, 7, 35, 35)
    assert more["segmentation"].max() < 7
    learned = read_config(workdir)
    learned.model.slot_init = "learned"  # one parameter vector per slot: the count is fixed
    with pytest.raises(UserError, match="learned its 4 initial slots one by one"):
        _with_inference_changes(learned, 7, None)
    assert _with_inference_changes(learned, 4, 2).model.num_iterations == 2


def test_command_line_writes_the_decomposition_and_its_figure(workdir, tmp_path, capsys):
    model = load(workdir)
    val = validation_set(model)["image"][:3]
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(val):
        Image.fromarray(image).save(folder / f"{i}.png")
    out = tmp_path / "parts"
    assert decompose.main([str(folder), f"--workdir={workdir}", f"--out={out}", "--num_slots=5"]) == 0
    assert "decomposed 3 images (35x35) into 5 slots of 16 with step 6" in capsys.readouterr().out
    with np.load(out / "decomposition.npz") as saved:
        np.testing.assert_array_equal(saved["images"], val)
        assert list(saved["names"]) == [str(folder / f"{i}.png") for i in range(3)] and int(saved["step"]) == 6
        want = load(workdir, num_slots=5).decompose(val)
        np.testing.assert_allclose(saved["slots"], want["slots"], atol=1e-6)
        np.testing.assert_array_equal(saved["segmentation"], want["segmentation"])
    with Image.open(out / "decomposition.png") as figure:  # 3 rows of input, recon, segmentation, 5 slots
        assert figure.size[0] > 8 * 96 and figure.size[1] > 3 * 96


def test_bad_input_is_a_one_line_error_and_writes_nothing(workdir, tmp_path, capsys):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "config.json").write_text(json.dumps({"kind": "vae"}))
    good = tmp_path / "good.png"
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(good)
    out = tmp_path / "out"
    cases = [
        ([str(tmp_path / "missing.png")], workdir, "missing.png not found"),
        ([str(tmp_path / "broken.png")], workdir, "broken.png cannot be read as an image"),
        ([str(tmp_path / "empty")], workdir, "no image files"),
        ([str(good)], tmp_path / "nowhere", "does not exist"),
        ([str(good)], tmp_path / "empty", "config.json not found"),
        ([str(good)], tmp_path / "vae", "holds a VAE"),
        ([str(good), "--step=3"], workdir, "no checkpoint of step 3"),
        ([str(good), "--sample"], workdir, "--sample is for the diffusion model"),
        ([str(good), "--num_slots=0"], workdir, "num_slots must be at least 1"),
    ]
    for args, run, message in cases:
        assert decompose.main([*args, f"--workdir={run}", f"--out={out}"]) == 2, message
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
    model = load(workdir)
    for images, message in ((np.zeros((2, 32, 32, 3), np.uint8), r"\[N, 35, 35, 3\]"),
                            (np.zeros((0, 35, 35, 3), np.uint8), "no images to decompose"),
                            (np.full((1, 35, 35, 3), np.nan, np.float32), "finite values in"),
                            (np.full((1, 35, 35, 3), 2.0, np.float32), r"in \[0, 1\]")):
        with pytest.raises(UserError, match=message):
            model.decompose(images)
    with pytest.raises(UserError, match=r"\[N, K, 16\]"):
        model.decode(np.zeros((2, 4, 8), np.float32))
