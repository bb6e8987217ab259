"""appliance.inference.cpu_precision: the runtime x precision choice is made on the CPU that runs the model,
among the candidates given, cached per CPU, runtimes, thread count, candidates and models, and never trusted
from a torn cache file."""

from __future__ import annotations

from pathlib import Path

import pytest

from appliance.inference.bundle import load_bundle
from appliance.inference.cpu_precision import (
    Candidate,
    choose_cpu_precision,
    cpu_candidates,
    cpu_fingerprint,
    has_native_bf16,
    measure,
)

BUNDLE = Path(__file__).resolve().parent.parent / "models" / "ct_chest"

ZEN2 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 23
model\t\t: 49
model name\t: AMD EPYC
cpu MHz\t\t: 2245.780
flags\t\t: fpu sse2 avx fma avx2 bmi2
processor\t: 1
model name\t: AMD EPYC
"""
GENOA = ZEN2.replace("cpu family\t: 23", "cpu family\t: 25").replace("model\t\t: 49", "model\t\t: 17").replace(
    "avx2 bmi2", "avx2 avx512f avx512bw avx512_vnni avx512_bf16")
ORIN = """processor\t: 0
BogoMIPS\t: 62.50
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU part\t: 0xd42
"""


ORT_BOTH = [Candidate("ort-cpu", "int8"), Candidate("ort-cpu", "fp32")]


class FakeRunner:
    """Stands in for the runtimes: each candidate's session takes 1.3x its ms on the first run (the
    warm-up), then its ms; `calls` records the order of the runs. `ms` is keyed by candidate key, or by
    precision for ONNX Runtime."""

    def __init__(self, ms: dict[str, float]) -> None:
        self.ms = {k if "-" in k else f"ort-cpu-{k}": v for k, v in ms.items()}
        self.calls: list[str] = []

    def __call__(self, key: str, path: Path, patch, channels: int, threads: int):
        which = key
        first = [True]

        def run_once() -> float:
            self.calls.append(which.removeprefix("ort-cpu-"))
            factor, first[0] = (1.3 if first[0] else 1.0), False
            return self.ms[which] * factor

        return run_once


def _refuse(*args, **kwargs):
    raise AssertionError("measured again although the cache holds the answer")


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(BUNDLE, verify=False)


@pytest.mark.parametrize(("ms", "faster"), [({"int8": 1249.0, "fp32": 1305.0}, "int8"),
                                             ({"int8": 1427.0, "fp32": 1271.0}, "fp32")])
def test_the_file_this_cpu_runs_faster_is_chosen_and_then_read_from_the_cache(bundle, tmp_path, ms, faster):
    spec = bundle.mode("full")
    keyed = {f"ort-cpu-{k}": v for k, v in ms.items()}
    first = choose_cpu_precision(bundle, spec, 2, cache_dir=tmp_path, cpu="cpu A", runner=FakeRunner(ms))
    assert (first.precision, first.source, first.ms_per_patch) == (faster, "measured", keyed)
    again = choose_cpu_precision(bundle, spec, 2, cache_dir=tmp_path, cpu="cpu A", runner=_refuse)
    assert (again.precision, again.source, again.ms_per_patch) == (faster, "cached", keyed)


def test_another_cpu_or_thread_count_measures_again(bundle, tmp_path):
    spec = bundle.mode("full")
    choose_cpu_precision(bundle, spec, 2, cache_dir=tmp_path, cpu="cpu A", runner=FakeRunner({"int8": 1, "fp32": 2}))
    other_cpu = FakeRunner({"int8": 3, "fp32": 2})
    assert choose_cpu_precision(bundle, spec, 2, cache_dir=tmp_path, cpu="cpu B", runner=other_cpu).precision == "fp32"
    one_thread = FakeRunner({"int8": 3, "fp32": 2})
    assert choose_cpu_precision(bundle, spec, 1, cache_dir=tmp_path, cpu="cpu A", runner=one_thread).source == "measured"
    assert other_cpu.calls and one_thread.calls
    assert len(list(tmp_path.glob("cpu-precision-full.fp32-*.json"))) == 3


def test_a_torn_cache_file_is_measured_again_not_trusted(bundle, tmp_path):
    spec = bundle.mode("full")
    choose_cpu_precision(bundle, spec, 2, cache_dir=tmp_path, cpu="c", runner=FakeRunner({"int8": 1, "fp32": 2}))
    (cached,) = tmp_path.glob("cpu-precision-*.json")
    cached.write_text('{"precision": "int8", "ms_per')
    runner = FakeRunner({"int8": 3, "fp32": 2})
    choice = choose_cpu_precision(bundle, spec, 2, cache_dir=tmp_path, cpu="c", runner=runner)
    assert (choice.precision, choice.source) == ("fp32", "measured") and runner.calls


def test_a_cache_that_cannot_be_written_still_gives_a_choice(bundle, tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    choice = choose_cpu_precision(bundle, bundle.mode("full"), 2, cache_dir=blocked / "engines", cpu="c",
                                  runner=FakeRunner({"int8": 1, "fp32": 2}))
    assert (choice.precision, choice.source) == ("int8", "measured")


def test_a_warm_up_far_slower_decides_without_timed_runs():
    runner = FakeRunner({"int8": 4500.0, "fp32": 1400.0})  # the preview student on a 2-core CPU
    ms = measure({"ort-cpu-int8": Path("p.int8.onnx"), "ort-cpu-fp32": Path("p.fp32.onnx")}, (8, 8, 8), 3, 2, runner)
    assert min(ms, key=ms.get) == "ort-cpu-fp32" and runner.calls == ["int8", "fp32"]


def test_close_files_are_timed_in_turn_after_their_warm_ups():
    runner = FakeRunner({"int8": 1249.0, "fp32": 1305.0})
    ms = measure({"ort-cpu-int8": Path("f.int8.onnx"), "ort-cpu-fp32": Path("f.fp32.onnx")}, (8, 8, 8), 3, 2, runner)
    assert ms == {"ort-cpu-int8": 1249.0, "ort-cpu-fp32": 1305.0}
    assert runner.calls == ["int8", "fp32"] * 3  # alternating: a drifting machine slows both alike


def test_cpu_fingerprint_names_the_processor_and_its_int8_relevant_instruction_sets_only():
    assert cpu_fingerprint(ZEN2).endswith("AMD EPYC 23/49 [avx2 fma]")
    genoa = cpu_fingerprint(GENOA)
    assert genoa.endswith("AMD EPYC 25/17 [avx2 fma avx512f avx512bw avx512_vnni avx512_bf16]")
    assert "MHz" not in genoa and genoa != cpu_fingerprint(ZEN2)
    assert cpu_fingerprint(ORIN).endswith("0x41/0xd42 [asimddp]")


def test_the_fastest_of_several_runtimes_and_precisions_wins_and_a_clear_loser_is_timed_once(bundle, tmp_path):
    spec = bundle.mode("full")
    candidates = [*ORT_BOTH, Candidate("openvino", "fp32"), Candidate("openvino", "bf16")]
    runner = FakeRunner({"int8": 950, "fp32": 1250, "openvino-fp32": 600, "openvino-bf16": 290})
    choice = choose_cpu_precision(bundle, spec, 2, candidates=candidates, cache_dir=tmp_path, cpu="c", runner=runner)
    assert (choice.runtime, choice.precision, choice.source) == ("openvino", "bf16", "measured")
    assert runner.calls.count("int8") == 1 and runner.calls.count("fp32") == 1  # warm-ups > 1.5x the fastest
    again = choose_cpu_precision(bundle, spec, 2, candidates=candidates, cache_dir=tmp_path, cpu="c", runner=_refuse)
    assert (again.runtime, again.precision, again.source) == ("openvino", "bf16", "cached")
    fewer = FakeRunner({"int8": 950, "fp32": 1250})  # another candidate list is measured anew
    assert choose_cpu_precision(bundle, spec, 2, candidates=ORT_BOTH, cache_dir=tmp_path, cpu="c",
                                runner=fewer).precision == "int8"


def test_a_single_candidate_is_not_timed(bundle, tmp_path):
    choice = choose_cpu_precision(bundle, bundle.mode("full"), 2, candidates=[Candidate("openvino", "fp32")],
                                  cache_dir=tmp_path, cpu="c", runner=_refuse)
    assert (choice.runtime, choice.precision, choice.source) == ("openvino", "fp32", "only candidate")


def test_bf16_is_a_candidate_only_where_the_cpu_has_native_bf16(bundle):
    spec = bundle.mode("full")
    keys = lambda cpu, ov: [c.key for c in cpu_candidates(spec, cpu, ov)]  # noqa: E731
    assert keys(cpu_fingerprint(GENOA), True) == ["ort-cpu-fp32", "ort-cpu-int8", "openvino-fp32", "openvino-bf16",
                                                   "openvino-int8"]
    assert "openvino-bf16" not in keys(cpu_fingerprint(ZEN2), True)
    assert keys(cpu_fingerprint(GENOA), False) == ["ort-cpu-fp32", "ort-cpu-int8"]
    assert has_native_bf16(cpu_fingerprint(GENOA)) and not has_native_bf16(cpu_fingerprint(ORIN))
