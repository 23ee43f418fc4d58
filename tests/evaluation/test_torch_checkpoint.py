"""The torch-free `.pth` reader against files written by torch itself."""
import os
import pathlib
import pickle
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from slot_jax.evaluation.torch_checkpoint import load_state_dict

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
TORCH_MISSING = "torch not installed: it writes the reference .pth files (pip install .[parity])"


def _state_dict(torch):
    gen = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=gen)
    return {
        "f32": torch.randn(3, 5, generator=gen),
        "f64": torch.randn(2, 3, dtype=torch.float64, generator=gen),
        "i64": torch.arange(-5, 7, dtype=torch.int64).reshape(3, 4),
        "i32": torch.tensor([1, -2, 3], dtype=torch.int32),
        "u8": torch.tensor([0, 7, 255], dtype=torch.uint8),
        "bool": torch.tensor([True, False, True]),
        "f16": torch.tensor([0.5, -1.25, 3.0], dtype=torch.float16),
        "bf16": torch.tensor([0.5, -1.25, 3.0], dtype=torch.bfloat16),
        "scalar": torch.tensor(2.5),
        "empty": torch.zeros(0, 3),
        "transposed": base.t(),  # non-contiguous, shares `base`'s storage
        "base": base,
        "slice": base[1:3, ::2],  # offset and strides into the same storage
        "conv.weight": torch.nn.Parameter(torch.randn(4, 3, 2, 2, generator=gen)),
    }


def _expected(tensor):
    if str(tensor.dtype) == "torch.bfloat16":
        return tensor.float().numpy()
    return tensor.detach().numpy()


@pytest.fixture(params=["zip", "legacy"])
def saved(request, tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_MISSING)
    state = _state_dict(torch)
    path = tmp_path / f"state_{request.param}.pth"
    torch.save(state, path, _use_new_zipfile_serialization=request.param == "zip")
    return path, {k: _expected(v) for k, v in state.items()}


def test_reads_what_torch_wrote(saved):
    path, expected = saved
    loaded = load_state_dict(path)
    assert list(loaded) == list(expected)
    for key, want in expected.items():
        got = loaded[key]
        assert got.dtype == want.dtype, key
        assert got.shape == want.shape, key
        assert got.flags.c_contiguous, key
        np.testing.assert_array_equal(got, want, err_msg=key)


def test_views_are_independent_copies(saved):
    path, _ = saved
    loaded = load_state_dict(path)
    loaded["base"][0, 0] = 1234.0
    assert loaded["transposed"][0, 0] != 1234.0


@pytest.mark.parametrize("keep", [0.5, 0.05])
def test_truncated_file_is_a_value_error_naming_it(saved, tmp_path, keep):
    path, _ = saved
    data = path.read_bytes()
    cut = tmp_path / "cut.pth"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(ValueError, match="cut.pth") as info:
        load_state_dict(cut)
    assert "\n" not in str(info.value)


def test_not_a_checkpoint_is_a_value_error(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("hello, not a checkpoint\n")
    with pytest.raises(ValueError, match=r"notes\.pth.*neither|notes\.pth.*not a zip"):
        load_state_dict(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_state_dict(tmp_path / "absent.pth")


def _zip_with_pickle(path, payload: bytes):
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("archive/data.pkl", payload)
        archive.writestr("archive/byteorder", "little")


def test_refuses_globals_outside_the_allow_list(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    path = tmp_path / "evil.pth"
    _zip_with_pickle(path, pickle.dumps({"w": Evil()}, protocol=2))
    with pytest.raises(ValueError, match=r"evil\.pth.*refusing global (posix|nt|os)\.system"):
        load_state_dict(path)


def _rewrite_zip(path, edit):
    with zipfile.ZipFile(path) as archive:
        entries = {n: archive.read(n) for n in archive.namelist()}
    prefix = next(n for n in entries if n.endswith("/data.pkl"))[: -len("data.pkl")]
    edit(entries, prefix)
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)


def test_refuses_a_tensor_layout_past_its_storage(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_MISSING)
    path = tmp_path / "oob.pth"
    torch.save({"w": torch.zeros(4)}, path)

    def shift_offset(entries, prefix):  # storage_offset 0 -> 2: elements 2..5 of 4
        pkl = entries[prefix + "data.pkl"]
        assert pkl.count(b"QK\x00") == 1  # BINPERSID, then BININT1 0 (the offset)
        entries[prefix + "data.pkl"] = pkl.replace(b"QK\x00", b"QK\x02")

    _rewrite_zip(path, shift_offset)
    with pytest.raises(ValueError, match=r"oob\.pth.*runs past its storage of 4 elements"):
        load_state_dict(path)


def test_refuses_a_storage_of_the_wrong_length(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_MISSING)
    path = tmp_path / "short.pth"
    torch.save({"w": torch.zeros(4)}, path)

    def drop_half(entries, prefix):
        entries[prefix + "data/0"] = entries[prefix + "data/0"][:8]

    _rewrite_zip(path, drop_half)
    with pytest.raises(ValueError, match=r"short\.pth.*storage 0 holds 8 bytes"):
        load_state_dict(path)


def test_modules_import_and_read_without_torch(tmp_path):
    torch = pytest.importorskip("torch", reason=TORCH_MISSING)
    path = tmp_path / "w.pth"
    torch.save({"w": torch.arange(6.0).reshape(2, 3).t()}, path)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import slot_jax.evaluation.torch_checkpoint as tc\n"
        "import slot_jax.evaluation.inception, slot_jax.evaluation.fid\n"
        f"w = tc.load_state_dict({str(path)!r})['w']\n"
        "assert w.tolist() == [[0, 3], [1, 4], [2, 5]], w\n"
        "assert sys.modules['torch'] is None\n"
        "print('ok')\n")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": str(REPO_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env=env, cwd=REPO_ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok"
