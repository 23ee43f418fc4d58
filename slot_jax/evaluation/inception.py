"""The FID Inception-v3 (2015-12-05 TensorFlow graph) in Flax, NHWC, inference only.

The architecture is pytorch-fid's `fid_inception_v3()`: torchvision's Inception-v3 with
`FIDInceptionA/C/E_1/E_2` blocks, which differ from torchvision's in their pool branches:
the A, C and E_1 blocks average-pool 3x3 (stride 1, pad 1) without counting the padding
(TensorFlow's behaviour), and E_2 (Mixed_7c) max-pools 3x3 instead. The output is the 2048-d
"pool3" feature: the global average pool after Mixed_7c.

Submodules carry pytorch-fid's names (`Mixed_5b/branch1x1/conv`, `.../bn`), so a state-dict
key maps mechanically onto the variables tree (see `load_pytorch_fid_weights`).

Input scaling. The network sees float images of 299x299; the two reference pipelines map
pixel values x in [0, 255] differently before the first convolution:
- "clean" (the TF graph, clean-fid's clean and legacy_tensorflow modes): (x - 128) / 128.
- "pytorch_fid" (pytorch-fid, clean-fid's legacy_pytorch mode): the network gets x / 255
  in [0, 1] and computes 2 * (x / 255) - 1 = (x - 127.5) / 127.5.
They are not equal: pytorch_fid - clean = x / 32640, from 0 at x = 0 to 1/128 at x = 255,
i.e. up to one grey level of the clean scale (not 1/255). The weights are the same: the
pytorch-fid `.pth` is a port of the 2015-12-05 TF graph's weights, and clean-fid's TorchScript
port of that graph (`InceptionV3W.forward`) applies (x - 128) / 128 before it. So pytorch-fid's
2x - 1 is its own approximation, not what the weights were trained with. REFERENCE section 3
defines the report's FID with the clean scaling, so "clean" is the default here.
"""
from __future__ import annotations

import functools
import hashlib
import os
import pathlib
import re
import tempfile
import urllib.request
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from slot_jax.errors import UserError
from slot_jax.evaluation.torch_checkpoint import load_state_dict

FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
WEIGHTS_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_ENV_VAR = "SLOT_JAX_INCEPTION_WEIGHTS"
DEFAULT_WEIGHTS_PATH = pathlib.Path("~/.cache/slot_jax") / WEIGHTS_FILENAME
# The "6726825d" in the name follows torch.hub's `name-<sha256 prefix>.ext` convention: it is
# the first 8 hex digits of the file's SHA-256 (not an md5, and not a full checksum). The full
# digest below (95,628,359 bytes) is the one pinned for this file by several public projects
# (the same file is re-hosted by torch-fidelity); it could not be recomputed here (no network).
WEIGHTS_SHA256 = "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2"

INPUT_SIZE = 299
FEATURE_DIM = 2048
INPUT_SCALINGS = ("clean", "pytorch_fid")


# ----------------------------------------------------------------------------- network


class _PointwiseConv(nn.Module):
    """A 1x1 stride-1 convolution as one matmul, with nn.Conv's parameter name and shape."""
    features: int
    precision: Any

    @nn.compact
    def __call__(self, x):
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (1, 1, x.shape[-1], self.features))
        return jnp.einsum("nhwc,co->nhwo", x, kernel[0, 0], precision=self.precision)


class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps=1e-3, running statistics) + ReLU."""
    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        ph, pw = self.padding
        if tuple(self.kernel_size) == (1, 1) and tuple(self.strides) == (1, 1) and self.padding == (0, 0):
            # Half of the network's convolutions; XLA:CPU runs them faster as a plain matmul.
            x = _PointwiseConv(self.features, self.precision, name="conv")(x)
        else:
            x = nn.Conv(self.features, self.kernel_size, strides=self.strides,
                        padding=((ph, ph), (pw, pw)), use_bias=False, precision=self.precision,
                        name="conv")(x)
        x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
        return nn.relu(x)


def _avg_pool_same(x):
    """3x3 stride-1 average pool that, like TensorFlow, ignores the zero padding."""
    return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                       count_include_pad=False)


def _max_pool_same(x):
    return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_reduce(x):
    return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class InceptionA(nn.Module):
    pool_features: int
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(64, (1, 1), name="branch1x1")(x)
        b5 = conv(48, (1, 1), name="branch5x5_1")(x)
        b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
        b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
        b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
        bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
        bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
        return jnp.concatenate([b3, bd, _max_pool_reduce(x)], axis=-1)


class InceptionC(nn.Module):
    channels_7x7: int
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        c7 = self.channels_7x7
        b1 = conv(192, (1, 1), name="branch1x1")(x)
        b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
        b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
        bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
        bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
        bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
        bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
        bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
        bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_same(x))
        return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b3 = conv(192, (1, 1), name="branch3x3_1")(x)
        b3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
        b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
        b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
        b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
        b7 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
        return jnp.concatenate([b3, b7, _max_pool_reduce(x)], axis=-1)


class InceptionE(nn.Module):
    """E block; `max_pool` selects FIDInceptionE_2 (Mixed_7c), else FIDInceptionE_1."""
    max_pool: bool
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        b1 = conv(320, (1, 1), name="branch1x1")(x)
        b3 = conv(384, (1, 1), name="branch3x3_1")(x)
        b3 = jnp.concatenate([
            conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
            conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)], axis=-1)
        bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
        bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
        bd = jnp.concatenate([
            conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
            conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)], axis=-1)
        pooled = _max_pool_same(x) if self.max_pool else _avg_pool_same(x)
        bp = conv(192, (1, 1), name="branch_pool")(pooled)
        return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class FIDInceptionV3(nn.Module):
    """Normalised NHWC images (see the module docstring) -> pool3 features [N, 2048]."""
    precision: Any = jax.lax.Precision.HIGHEST

    @nn.compact
    def __call__(self, x):
        conv = functools.partial(BasicConv2d, precision=self.precision)
        kw = dict(precision=self.precision)
        x = conv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
        x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
        x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
        x = _max_pool_reduce(x)
        x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
        x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
        x = _max_pool_reduce(x)
        x = InceptionA(32, **kw, name="Mixed_5b")(x)
        x = InceptionA(64, **kw, name="Mixed_5c")(x)
        x = InceptionA(64, **kw, name="Mixed_5d")(x)
        x = InceptionB(**kw, name="Mixed_6a")(x)
        x = InceptionC(128, **kw, name="Mixed_6b")(x)
        x = InceptionC(160, **kw, name="Mixed_6c")(x)
        x = InceptionC(160, **kw, name="Mixed_6d")(x)
        x = InceptionC(192, **kw, name="Mixed_6e")(x)
        x = InceptionD(**kw, name="Mixed_7a")(x)
        x = InceptionE(max_pool=False, **kw, name="Mixed_7b")(x)
        x = InceptionE(max_pool=True, **kw, name="Mixed_7c")(x)
        return jnp.mean(x, axis=(1, 2))


def scale_input(images_0_255, input_scaling: str = "clean"):
    """Map float pixel values in [0, 255] to the network's input (see the module docstring)."""
    x = jnp.asarray(images_0_255, jnp.float32)
    if input_scaling == "clean":
        return (x - 128.0) / 128.0
    if input_scaling == "pytorch_fid":
        return (x / 255.0) * 2.0 - 1.0
    raise ValueError(f"input_scaling must be one of {INPUT_SCALINGS}, got {input_scaling!r}")


@jax.jit
def _pool3(params, x):
    return FIDInceptionV3().apply(params, x)


def fid_inception_features(params, images_0_255_float, input_scaling: str = "clean"):
    """Pool3 features [N, 2048] (float32) of float images [N, 299, 299, 3] in [0, 255].

    `params` is the full variables dict {"params", "batch_stats"} from
    `load_pytorch_fid_weights`. Images must already be resized to 299x299 (`fid.clean_resize`
    for clean-fid's clean mode, `fid.legacy_resize` for pytorch-fid). `input_scaling` is
    "clean" ((x - 128) / 128, the TF graph and clean-fid) or "pytorch_fid" (x / 255 * 2 - 1).
    Call it on batches that fit in memory; each new batch shape compiles once.
    """
    images = jnp.asarray(images_0_255_float)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images [N, H, W, 3], got shape {images.shape}")
    return _pool3(params, scale_input(images, input_scaling))


# ----------------------------------------------------------------------------- weights


def _expected_variables():
    shapes = jax.eval_shape(
        FIDInceptionV3().init, jax.random.key(0),
        jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
    return jax.tree.map(lambda s: s.shape, shapes)


_TORCH_TO_FLAX = {  # last state-dict name part -> (collection, flax leaf name)
    ("conv", "weight"): ("params", "kernel"),
    ("bn", "weight"): ("params", "scale"),
    ("bn", "bias"): ("params", "bias"),
    ("bn", "running_mean"): ("batch_stats", "mean"),
    ("bn", "running_var"): ("batch_stats", "var"),
}
# Present in the file but not used for pool3 features.
_IGNORED = re.compile(r"^fc\.(weight|bias)$|\.num_batches_tracked$")
# The TF graph's classifier has 1008 outputs; torchvision's ImageNet Inception (same conv
# shapes, different weights) has 1000, so this tells the two files apart.
_FID_NUM_CLASSES = 1008


def variables_from_state_dict(state_dict: dict[str, np.ndarray], source: str = "state dict"):
    """Map pytorch-fid's state-dict names onto the Flax variables of `FIDInceptionV3`.

    `Mixed_5b.branch1x1.conv.weight` [O, I, H, W] -> params/Mixed_5b/branch1x1/conv/kernel
    [H, W, I, O]; `....bn.weight/bias` -> params/.../bn/scale/bias; `....bn.running_mean/var`
    -> batch_stats/.../bn/mean/var. `fc.*` and `num_batches_tracked` are ignored; every other
    name must match and every shape must agree, else ValueError.
    """
    fc = state_dict.get("fc.weight")
    if fc is not None and fc.shape[0] != _FID_NUM_CLASSES:
        raise ValueError(f"{source}: fc.weight has {fc.shape[0]} classes, the FID Inception "
                         f"has {_FID_NUM_CLASSES} (torchvision's ImageNet weights are not "
                         f"the FID weights)")
    expected = _expected_variables()
    out: dict = {"params": {}, "batch_stats": {}}
    unexpected = []
    for name, value in state_dict.items():
        if _IGNORED.search(name):
            continue
        parts = name.split(".")
        target = _TORCH_TO_FLAX.get(tuple(parts[-2:]))
        if target is None:
            unexpected.append(name)
            continue
        collection, leaf = target
        value = np.asarray(value, np.float32)
        if leaf == "kernel":
            value = value.transpose(2, 3, 1, 0)
        node = out[collection]
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[leaf] = value

    expected_paths = {p: s for p, s in _flatten(expected).items()}
    got_paths = _flatten(out)
    missing = sorted(set(expected_paths) - set(got_paths))
    unexpected += sorted(set(got_paths) - set(expected_paths))
    if missing or unexpected:
        raise ValueError(
            f"{source} does not match the FID Inception layout: {len(missing)} missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})")
    for path, shape in expected_paths.items():
        if got_paths[path].shape != tuple(shape):
            raise ValueError(f"{source}: {'/'.join(path)} has shape {got_paths[path].shape}, "
                             f"expected {tuple(shape)}")
    return jax.tree.map(jnp.asarray, out)


def _flatten(tree, prefix=()):
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) or hasattr(value, "items"):
            flat.update(_flatten(value, prefix + (key,)))
        else:
            flat[prefix + (key,)] = value
    return flat


def load_pytorch_fid_weights(path: str | os.PathLike):
    """Read pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (no torch needed) into the
    variables dict {"params", "batch_stats"} for `fid_inception_features`."""
    return variables_from_state_dict(load_state_dict(path), source=os.fspath(path))


class WeightsNotFoundError(FileNotFoundError, UserError):
    """No Inception weights file; the one-line message says where to put one."""


def resolve_weights_path(flag_value: str | os.PathLike | None = None) -> pathlib.Path:
    """The weights file: the explicit path, else $SLOT_JAX_INCEPTION_WEIGHTS, else the cache.

    A path given explicitly (flag or environment variable) must exist: a typo is reported
    rather than silently replaced by another file.
    """
    hint = (f"download {FID_WEIGHTS_URL} to {DEFAULT_WEIGHTS_PATH}, or set ${WEIGHTS_ENV_VAR} "
            f"or the weights flag to its path")
    if flag_value:
        path = pathlib.Path(flag_value).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"Inception weights {path} (given explicitly) not "
                                       f"found; {hint}")
        return path
    env_value = os.environ.get(WEIGHTS_ENV_VAR)
    if env_value:
        path = pathlib.Path(env_value).expanduser()
        if not path.is_file():
            raise WeightsNotFoundError(f"Inception weights {path} (from ${WEIGHTS_ENV_VAR}) "
                                       f"not found; {hint}")
        return path
    path = DEFAULT_WEIGHTS_PATH.expanduser()
    if not path.is_file():
        raise WeightsNotFoundError(f"Inception weights {WEIGHTS_FILENAME} not found at {path} "
                                   f"and ${WEIGHTS_ENV_VAR} is unset; {hint}")
    return path


def download_weights(dest: str | os.PathLike | None = None, url: str = FID_WEIGHTS_URL,
                     sha256: str | None = WEIGHTS_SHA256, timeout_s: float = 60.0):
    """Download the weights to `dest` (default: the cache path), checking the SHA-256.

    Without a full `sha256`, the 8-hex-digit SHA-256 prefix in the URL's file name (torch.hub
    convention) is checked instead, which only guards against gross corruption. The file is
    written to a temporary name beside `dest` and renamed once verified, so a failed or
    interrupted download leaves nothing behind.
    """
    dest = pathlib.Path(dest or DEFAULT_WEIGHTS_PATH).expanduser()
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".part", dir=dest.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout_s) as src:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if sha256 is not None:
            if got != sha256.lower():
                raise ValueError(f"checksum mismatch for {url}: sha256 {got}, expected {sha256}")
        else:
            prefix = re.search(r"-([0-9a-f]{8,})\.", url.rsplit("/", 1)[-1])
            if prefix and not got.startswith(prefix.group(1)):
                raise ValueError(f"checksum mismatch for {url}: sha256 {got} does not start "
                                 f"with {prefix.group(1)}")
        os.replace(tmp_name, dest)
    except BaseException:
        pathlib.Path(tmp_name).unlink(missing_ok=True)
        raise
    return dest
