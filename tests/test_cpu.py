from slot_jax import cpu

X86 = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx fma avx2 bmi2

processor\t: 1
model name\t: Something Else
flags\t\t: fpu avx512f avx512_bf16
"""

ARM = """processor\t: 0
BogoMIPS\t: 243.75
Features\t: fp asimd evtstrm sve bf16
CPU implementer\t: 0x41
"""


def test_first_processor_model_and_vector_flags():
    assert cpu.parse_cpuinfo(X86) == {"model": "AMD EPYC 7B13", "vector_isa": ["avx2", "fma"]}


def test_arm_features_without_a_model_name(monkeypatch):
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    assert cpu.parse_cpuinfo(ARM) == {"model": "aarch64", "vector_isa": ["asimd", "sve", "bf16"]}


def test_this_machine_is_described():
    info = cpu.describe()
    assert info["model"] and isinstance(info["vector_isa"], list)


def test_native_bf16_on_avx512_bf16_amx_and_arm_bf16_only(monkeypatch):
    assert not cpu.has_native_bf16(cpu.parse_cpuinfo(X86))  # AVX2 + FMA
    assert cpu.has_native_bf16({"model": "x", "vector_isa": ["avx512f", "avx512_bf16"]})
    assert cpu.has_native_bf16({"model": "x", "vector_isa": ["amx_bf16", "amx_tile"]})
    assert not cpu.has_native_bf16({"model": "x", "vector_isa": ["avx512f", "avx512_vnni"]})
    monkeypatch.setattr(cpu.platform, "machine", lambda: "aarch64")
    assert cpu.has_native_bf16(cpu.parse_cpuinfo(ARM))
