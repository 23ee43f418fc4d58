"""The Flax FID Inception against pytorch-fid's network (random weights of the real layout)."""
import hashlib
import os
import pathlib
import re

import numpy as np
import pytest

from slot_jax.errors import UserError
from slot_jax.evaluation import inception

BATCH = 2


def _require_reference():
    torch = pytest.importorskip(
        "torch", reason="torch not installed: it runs the pytorch-fid reference")
    pytest.importorskip(
        "torchvision", reason="torchvision not installed: it builds pytorch-fid's Inception")
    pytest.importorskip(
        "pytorch_fid", reason="pytorch-fid not installed: it is the reference network")
    return torch


def _build_fid_inception(torch):
    """pytorch-fid's `fid_inception_v3()` without its download, with random weights.

    Same construction as pytorch-fid: torchvision's Inception-v3 (1008 classes, no aux
    logits), then the FIDInception* blocks put in place of Mixed_5b..Mixed_7c.
    """
    import torchvision
    from pytorch_fid import inception as pf

    torch.manual_seed(0)
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True,
                                          num_classes=1008)
    net.Mixed_5b = pf.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pf.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pf.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pf.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pf.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pf.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pf.FIDInceptionE_1(1280)
    net.Mixed_7c = pf.FIDInceptionE_2(2048)
    # torchvision's inits leave BatchNorm at identity; draw statistics and affine parameters
    # of realistic scale so every BN entry (and its transposition) matters for the output.
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for module in net.modules():
            if isinstance(module, torch.nn.Conv2d):
                fan_in = module.weight[0].numel()
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen)
                                    * (2.0 / fan_in) ** 0.5)
            elif isinstance(module, torch.nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(0.2 * torch.randn(n, generator=gen))
                module.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                module.weight.copy_(0.5 + torch.rand(n, generator=gen))
                module.bias.copy_(0.2 * torch.randn(n, generator=gen))
    return net.eval()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(pytorch-fid's InceptionV3 wrapper holding random weights, path of their .pth)."""
    torch = _require_reference()
    from pytorch_fid import inception as pf

    torch.set_num_threads(1)
    path = tmp_path_factory.mktemp("weights") / inception.WEIGHTS_FILENAME
    torch.save(_build_fid_inception(torch).state_dict(), path)

    # pytorch-fid's own wrapper (blocks, 2x-1 scaling), loading our file instead of its URL.
    original = pf.load_state_dict_from_url
    pf.load_state_dict_from_url = lambda url, **kw: torch.load(path, weights_only=True)
    try:
        model = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=False,
                               normalize_input=True).eval()
    finally:
        pf.load_state_dict_from_url = original
    return model, path


@pytest.fixture(scope="module")
def images_0_255():
    return np.random.default_rng(0).uniform(0, 255, (BATCH, 299, 299, 3)).astype(np.float32)


def test_state_dict_names_map_onto_the_flax_tree(reference):
    torch = _require_reference()
    _, path = reference
    names = list(torch.load(path, weights_only=True))
    assert len(names) == 566  # 94 conv+bn units x 6 tensors, fc weight and bias
    assert "Conv2d_1a_3x3.conv.weight" in names
    assert "Mixed_5b.branch1x1.bn.running_mean" in names
    variables = inception.load_pytorch_fid_weights(path)
    kernel = variables["params"]["Mixed_7c"]["branch3x3dbl_3b"]["conv"]["kernel"]
    assert kernel.shape == (3, 1, 384, 384)  # torch (384, 384, 3, 1) OIHW -> HWIO
    assert set(variables) == {"params", "batch_stats"}


def _torch_pool3(torch, model, nchw):
    with torch.no_grad():
        return model(torch.from_numpy(nchw))[0].squeeze(-1).squeeze(-1).numpy()


def _assert_close(ours, ref):
    ours = np.asarray(ours)
    assert ours.shape == ref.shape == (BATCH, inception.FEATURE_DIM)
    assert np.abs(ref).max() > 1e-2  # not a dead network
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4 * np.abs(ref).max())


def test_pool3_matches_pytorch_fid(reference, images_0_255):
    """Both input scalings, each against pytorch-fid's network on the same tensor."""
    torch = _require_reference()
    model, path = reference
    variables = inception.load_pytorch_fid_weights(path)
    nchw = np.ascontiguousarray(images_0_255.transpose(0, 3, 1, 2))

    # pytorch_fid: the wrapper gets x/255 in [0, 1] and applies 2x-1 itself.
    model.normalize_input = True
    ref = _torch_pool3(torch, model, nchw / np.float32(255))
    ours = inception.fid_inception_features(variables, images_0_255, "pytorch_fid")
    _assert_close(ours, ref)

    # clean: (x - 128) / 128 fed to the same network unnormalised.
    model.normalize_input = False
    ref_clean = _torch_pool3(torch, model, (nchw - 128) / np.float32(128))
    model.normalize_input = True
    ours_clean = inception.fid_inception_features(variables, images_0_255, "clean")
    _assert_close(ours_clean, ref_clean)
    assert np.abs(np.asarray(ours_clean) - ref).max() > 1e-6  # the scalings do differ


def test_scalings_differ_by_x_over_32640():
    x = np.arange(256, dtype=np.float32)
    diff = np.asarray(inception.scale_input(x, "pytorch_fid") - inception.scale_input(x, "clean"))
    np.testing.assert_allclose(diff, x / 32640, atol=1e-6)
    assert diff[0] == 0 and abs(diff[255] - 1 / 128) < 1e-6
    with pytest.raises(ValueError, match="input_scaling"):
        inception.scale_input(x, "tf")


def test_loader_rejects_wrong_layouts(reference):
    torch = _require_reference()
    _, path = reference
    state = torch.load(path, weights_only=True)
    from slot_jax.evaluation.torch_checkpoint import load_state_dict
    arrays = load_state_dict(path)

    missing = dict(arrays)
    del missing["Mixed_6b.branch7x7_2.bn.running_var"]
    with pytest.raises(ValueError, match="1 missing.*Mixed_6b"):
        inception.variables_from_state_dict(missing)

    extra = {**arrays, "Mixed_6b.branch9x9.conv.weight": arrays["Mixed_6b.branch1x1.conv.weight"]}
    with pytest.raises(ValueError, match="1 unexpected.*branch9x9"):
        inception.variables_from_state_dict(extra)

    wrong = {**arrays, "Mixed_5b.branch1x1.conv.weight": np.zeros((64, 192, 3, 3), np.float32)}
    with pytest.raises(ValueError, match="Mixed_5b/branch1x1/conv/kernel has shape"):
        inception.variables_from_state_dict(wrong)

    imagenet = {**arrays, "fc.weight": np.zeros((1000, 2048), np.float32)}
    with pytest.raises(ValueError, match="1000 classes"):
        inception.variables_from_state_dict(imagenet)
    assert len(state) == len(arrays)


# ----------------------------------------------------------------------------- weight files


def test_resolve_weights_path_order(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv(inception.WEIGHTS_ENV_VAR, raising=False)
    cached = tmp_path / ".cache" / "slot_jax" / inception.WEIGHTS_FILENAME
    with pytest.raises(FileNotFoundError) as info:
        inception.resolve_weights_path()
    message = str(info.value)
    assert "\n" not in message and isinstance(info.value, UserError)
    for needle in (str(cached), inception.WEIGHTS_ENV_VAR, inception.FID_WEIGHTS_URL):
        assert needle in message

    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"x")
    assert inception.resolve_weights_path() == cached
    from_env = tmp_path / "env.pth"
    from_env.write_bytes(b"x")
    monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(from_env))
    assert inception.resolve_weights_path() == from_env
    explicit = tmp_path / "flag.pth"
    explicit.write_bytes(b"x")
    assert inception.resolve_weights_path(explicit) == explicit
    with pytest.raises(FileNotFoundError, match="typo.pth"):
        inception.resolve_weights_path(tmp_path / "typo.pth")
    monkeypatch.setenv(inception.WEIGHTS_ENV_VAR, str(tmp_path / "gone.pth"))
    with pytest.raises(FileNotFoundError, match="gone.pth"):
        inception.resolve_weights_path()


def test_download_checks_the_digest_and_writes_atomically(tmp_path):
    source = tmp_path / "served-6726825d.pth"
    source.write_bytes(b"weights" * 1000)
    good = hashlib.sha256(source.read_bytes()).hexdigest()
    dest = tmp_path / "out" / "w.pth"

    with pytest.raises(ValueError, match="checksum mismatch"):
        inception.download_weights(dest, url=source.as_uri(), sha256="0" * 64)
    assert not dest.exists() and os.listdir(dest.parent) == []
    with pytest.raises(ValueError, match="does not start with 6726825d"):  # name prefix only
        inception.download_weights(dest, url=source.as_uri(), sha256=None)
    assert os.listdir(dest.parent) == []

    assert inception.download_weights(dest, url=source.as_uri(), sha256=good) == dest
    assert dest.read_bytes() == source.read_bytes()
    assert os.listdir(dest.parent) == ["w.pth"]


def test_pinned_digest_matches_the_file_name():
    prefix = re.search(r"-([0-9a-f]{8})\.pth$", inception.FID_WEIGHTS_URL).group(1)
    assert inception.WEIGHTS_SHA256.startswith(prefix) and len(inception.WEIGHTS_SHA256) == 64
    assert pathlib.Path(inception.FID_WEIGHTS_URL).name == inception.WEIGHTS_FILENAME
