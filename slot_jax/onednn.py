"""oneDNN's convolution, called from inside XLA:CPU.

jaxlib's XLA:CPU carries oneDNN and runs an HLO custom call named `__onednn$convolution` with
oneDNN's forward convolution (on AVX-512 machines its brgemm kernels, the ones PyTorch's CPU
convolutions use). Its own rewrite pass that would produce these calls is compiled out of the
public wheels, so slot_jax emits the call itself through `jax.ffi.ffi_call`, with the layout and
window given as XLA's `BackendConfig` in JSON.

That config is an XLA internal whose encoding has changed between releases (older ones stored
spatial dimensions 1-based and windows with offsets), and a config oneDNN cannot read aborts the
process. So before first use a child process runs a few oneDNN convolutions against
`lax.conv_general_dilated` (`probe`); only if they agree is the custom call used, and the verdict
is cached per jaxlib build and operand dtype (float32, bfloat16: a oneDNN without bf16 kernels
must not cost the float32 calls). SLOT_JAX_ONEDNN=0 turns it off, =1 skips the probe.
"""
import functools
import hashlib
import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np

from slot_jax import cpu

TARGET = "__onednn$convolution"
SWITCH = "SLOT_JAX_ONEDNN"
# Whether layers hand their bias and ReLU to oneDNN as post-ops (read at trace time; benchmarks
# turn it off to time the same step with XLA's separate pass).
EPILOGUE = True


def _layout(batch: int, feature: int, spatial) -> dict:
    return {"dims": 4, "data": {"batch_dim": batch, "feature_dim": feature, "spatial_dims": list(spatial)}}


def backend_config(window, stride: int, pads, epilogue=()) -> str:
    """NHWC input and output, HWIO kernel of spatial size `window` (height, width); pads
    ((top, bottom), (left, right)), all >= 0; `epilogue`: oneDNN post-ops applied to the output
    in order, "BIAS" (a [O] operand) and/or "RELU"."""
    (top, bottom), (left, right) = pads
    fusions = {"fusions": {"ops": list(epilogue)}} if epilogue else {}
    return json.dumps({"onednn_conv_config": {
        "dims": 4,
        "input": _layout(0, 3, (1, 2)),
        "kernel": {"dims": 4, "filter": {"input_feature_dim": 2, "output_feature_dim": 3, "spatial_dims": [0, 1]}},
        "output": _layout(0, 3, (1, 2)),
        "window": {"size": list(window), "pad_left": [top, left], "pad_right": [bottom, right],
                   "strides": [stride, stride], "window_dilations": [1, 1]},
        "feature_groups": 1, **fusions}}, separators=(",", ":"))


def conv(x, kernel, stride: int, pads, bias=None, relu: bool = False, out_dtype=None):
    """x [N, H, W, C], kernel [kh, kw, C, O] of one dtype -> [N, Ho, Wo, O], as
    lax.conv_general_dilated with NHWC/HWIO/NHWC and explicit non-negative padding, then `+ bias`
    ([O]) and a ReLU if given, both applied while the output is still in registers. oneDNN
    accumulates in float32; `out_dtype` (default x's) may keep a bfloat16 convolution's result in
    float32. Forward only: no autodiff rule."""
    kh, kw = kernel.shape[:2]
    (top, bottom), (left, right) = pads
    n, h, w, _ = x.shape
    out_h = (h + top + bottom - kh) // stride + 1
    out_w = (w + left + right - kw) // stride + 1
    result = jax.ShapeDtypeStruct((n, out_h, out_w, kernel.shape[3]), out_dtype or x.dtype)
    epilogue = ("BIAS",) * (bias is not None) + ("RELU",) * relu
    call = jax.ffi.ffi_call(TARGET, result, custom_call_api_version=1, vmap_method="sequential",
                            legacy_backend_config=backend_config((kh, kw), stride, pads, epilogue))
    return call(x, kernel, *([] if bias is None else [bias]))


def supports(x, kernel, pads) -> bool:
    """Whether `conv` can compute this case: float32 or bfloat16 operands of one dtype,
    non-negative padding (`available(dtype)` says whether this process may call it)."""
    return (x.dtype == kernel.dtype and x.dtype.name in PROBE_CASES
            and min(min(p) for p in pads) >= 0)


def usable(x, kernel, pads) -> bool:
    """Whether this process may compute this case with `conv`."""
    return supports(x, kernel, pads) and available(x.dtype.name)


# Cases for the probe, per operand dtype: (N, H, W, C, O, (kh, kw), stride, pads, with bias and
# ReLU, output dtype). Asymmetric sizes, windows and padding, so that a config read with the
# wrong axes or offsets cannot agree by symmetry.
PROBE_CASES = {
    "float32": ((2, 9, 7, 3, 5, (3, 3), 1, ((1, 1), (1, 1)), False, "float32"),
                (3, 12, 10, 4, 6, (5, 5), 2, ((1, 2), (2, 1)), False, "float32"),
                (1, 6, 8, 8, 2, (1, 1), 1, ((0, 0), (0, 0)), False, "float32"),
                (2, 7, 9, 3, 4, (2, 3), 1, ((1, 0), (1, 1)), False, "float32"),
                (2, 8, 6, 5, 7, (3, 3), 1, ((1, 1), (0, 2)), True, "float32")),
    "bfloat16": ((3, 12, 10, 4, 6, (5, 5), 2, ((1, 2), (2, 1)), False, "bfloat16"),
                 (2, 8, 6, 5, 7, (3, 3), 1, ((1, 1), (0, 2)), True, "bfloat16"),
                 (2, 9, 7, 6, 3, (4, 5), 1, ((1, 2), (2, 2)), False, "float32")),
}
# Relative to the largest output: float32 accumulation differs in rounding only; a bfloat16
# output is rounded to 8 significant bits (relative error <= 2^-8).
PROBE_TOLERANCE = {"float32": 1e-5, "bfloat16": 1e-2}


def _probe_in_this_process(dtype: str = "float32") -> dict:
    from jax import lax
    rng = np.random.default_rng(0)
    worst = {}
    for n, h, w, c, o, k, stride, pads, fused, out_dtype in PROBE_CASES[dtype]:
        x = jnp.asarray(rng.standard_normal((n, h, w, c)), dtype)
        kernel = jnp.asarray(rng.standard_normal((*k, c, o)), dtype)
        bias = jnp.asarray(rng.standard_normal(o), dtype) if fused else None
        got = jax.jit(lambda x, k, b: conv(x, k, stride, pads, b, fused, out_dtype))(x, kernel, bias)
        # The exact result on the same (rounded) operands.
        want = lax.conv_general_dilated(x.astype(jnp.float32), kernel.astype(jnp.float32), (stride, stride), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        precision=lax.Precision.HIGHEST)
        if fused:
            want = jnp.maximum(want + bias.astype(jnp.float32), 0)
        if got.shape != want.shape or got.dtype != out_dtype:
            return {"ok": False, "why": f"{got.dtype}{got.shape} != {out_dtype}{want.shape}"}
        error = float(jnp.max(jnp.abs(got.astype(jnp.float32) - want)) / jnp.max(jnp.abs(want)))
        worst[out_dtype] = max(worst.get(out_dtype, 0.0), error)
    ok = all(error < PROBE_TOLERANCE[d] for d, error in worst.items())
    return {"ok": ok, "why": ", ".join(f"largest relative difference {e:.1e} ({d} outputs)" for d, e in worst.items())}


def _cache_file(dtype: str = "float32") -> pathlib.Path:
    import jaxlib
    # The cases are part of the key: a verdict reached on fewer cases is not reused. So is the CPU:
    # a home directory that moves to a machine without AVX512_BF16 must probe bfloat16 again.
    build = (f"{jaxlib.__version__} {jaxlib.__file__} {os.environ.get('XLA_FLAGS', '')} {sys.executable} "
             f"{PROBE_CASES[dtype]} {PROBE_TOLERANCE} {cpu.describe()}")
    digest = hashlib.sha256(build.encode()).hexdigest()[:16]
    root = pathlib.Path(os.environ.get("XDG_CACHE_HOME", pathlib.Path.home() / ".cache"))
    return root / "slot_jax" / f"onednn_probe_{dtype}_{digest}.json"


PROBE_CODE = "import json, slot_jax.onednn as o; print(json.dumps(o._probe_in_this_process({dtype!r})))"


def probe(code: str = "", dtype: str = "float32") -> dict:
    """Runs `_probe_in_this_process(dtype)` (or `code`) in a child process (a config oneDNN cannot
    read aborts it)."""
    code = code or PROBE_CODE.format(dtype=dtype)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    root = str(pathlib.Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH", "")]))
    try:
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as error:  # e.g. a busy machine: try again next time
        return {"ok": False, "why": f"probe did not run: {error}", "transient": True}
    if done.returncode != 0:
        return {"ok": False, "why": f"probe exited with {done.returncode}: {done.stderr.strip()[-200:]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


@functools.cache
def available(dtype: str = "float32") -> bool:
    """Whether this process may call oneDNN's convolution on `dtype` operands (probed once per
    jaxlib build and dtype; never for a dtype without probe cases)."""
    switch = os.environ.get(SWITCH, "")
    if dtype not in PROBE_CASES or switch == "0" or jax.default_backend() != "cpu":
        return False
    if switch == "1":
        return True
    try:
        cache = _cache_file(dtype)
    except RuntimeError:  # no home directory to cache in
        cache = None
    if cache is not None:
        try:
            return bool(json.loads(cache.read_text())["ok"])
        except (OSError, ValueError, KeyError):  # not probed yet, or unreadable
            pass
    verdict = probe(dtype=dtype)
    if cache is not None and not verdict.get("transient"):
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            partial = cache.with_suffix(f".{os.getpid()}.tmp")  # processes probing at once never read half a file
            partial.write_text(json.dumps(verdict))
            os.replace(partial, cache)
        except OSError:
            pass  # a read-only home: probe again next time
    return bool(verdict["ok"])
