from conftest import SA_CONFIG
from slot_jax.config_loader import config_from_args
from slot_jax.training.experiment import slow_dtype_note

AVX2 = {"model": "AMD EPYC", "vector_isa": ["avx2", "fma"]}
AVX512_BF16 = {"model": "Intel Xeon", "vector_isa": ["avx512f", "avx512_bf16"]}


def _config(dtype):
    return config_from_args(f"{SA_CONFIG}:quick", {"model.compute_dtype": dtype})


def test_bfloat16_on_a_cpu_without_native_bf16_gets_a_note_naming_the_cpu_and_the_fix():
    note = slow_dtype_note(_config("bfloat16"), "cpu", AVX2)
    assert note.startswith("note: ") and "AMD EPYC" in note and "avx2, fma" in note and "float32" in note


def test_no_note_for_float32_native_bf16_cpus_or_accelerators():
    assert slow_dtype_note(_config("float32"), "cpu", AVX2) is None
    assert slow_dtype_note(_config("bfloat16"), "cpu", AVX512_BF16) is None
    assert slow_dtype_note(_config("bfloat16"), "gpu", AVX2) is None
