"""The benchmark runs end to end on a tiny config and writes its JSON and table (no timing
assertions: speed is measured, never asserted), and the random StyleGAN weights have the
real layout."""

from __future__ import annotations

import json
import math
from pathlib import Path

import benchmark_lib as benchmark
import jax
import numpy as np
import pytest

from pulse_jax import testing

FFHQ_KEYS = Path(__file__).parent / "data" / "stylegan_ffhq1024_keys.tsv"


@pytest.mark.slow
def test_benchmark_runs_and_writes_json_and_markdown(tmp_path):
    results = benchmark.run(
        ["dcgan64", "stylegan32"], [1], steps=2, repeats=1, matmul_sizes=(128,), profile_cases=True
    )
    json_path, md_path = benchmark.write(results, tmp_path)

    loaded = json.loads(json_path.read_text())
    assert loaded["matmul_peak"]["flops"] > 0
    assert loaded["stream_bandwidth"] > 0
    assert {"platform", "cpu", "jax", "date"} <= set(loaded["machine"])
    assert [(c["generator"], c["samples"]) for c in loaded["cases"]] == [
        ("dcgan64", 1),
        ("stylegan32", 1),
    ]
    for case in loaded["cases"]:
        assert set(benchmark.FIELDS) <= set(case)
        for field in ("compile_s", "s_per_step", "latent_steps_per_s", "flops_per_step"):
            assert math.isfinite(case[field]) and case[field] > 0, field
        assert 0 < case["utilization"] and 0 < case["utilization_vs_best"]
        assert case["xla_bytes"] > 0
        assert set(case["profile"]) >= {"step_s", "per_call_s", "by_kind", "by_size", "top"}

    # Each generator's cases are measured between two peak measurements; utilization is
    # against the better of those two, `utilization_vs_best` against the run's best.
    peaks = [p["flops"] for p in loaded["matmul_peak"]["measurements"]]
    assert len(peaks) == 3 and loaded["matmul_peak"]["flops"] == max(peaks)
    for g, case in enumerate(loaded["cases"]):
        assert case["peak_flops"] == max(peaks[g], peaks[g + 1])
        assert math.isclose(case["utilization"], case["achieved_flops"] / case["peak_flops"])
        assert math.isclose(case["utilization_vs_best"], case["achieved_flops"] / max(peaks))

    assert [r["layer"] for r in loaded["conv_rates"]] == [c[0] for c in benchmark.LAYER_CONVS]
    assert all(r["flops"] > 0 and r["flops_per_s"] > 0 for r in loaded["conv_rates"])

    table = md_path.read_text()
    assert "| generator | samples | compile s | s/step |" in table
    assert "| dcgan64 | 1 |" in table and "| stylegan32 | 1 |" in table
    assert "Where a step's time goes" in table
    assert "| conv 3x3, 16->16 at 1024 px |" in table


def test_unknown_generator_is_refused():
    with pytest.raises(ValueError, match="unknown generator"):
        benchmark.make_generator("stylegan")


def test_channel_plan_is_ffhq():
    # StyleGAN v1's plan (fmap_base 8192) is NVIDIA's with channel_base 2 * fmap_base.
    assert testing.channels_for(1024, 16384, 512) == (512, 512, 512, 512, 256, 128, 64, 32, 16)
    assert testing.channels_for(128, 2 * 512, 64) == (64, 64, 64, 32, 16, 8)
    assert testing.channels_for(1024, 32768, 512) == (512,) * 5 + (256, 128, 64, 32)


def _reference_shape(key: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    """A PyTorch shape from the reference key list, in the converters' JAX layout."""
    if key.endswith("const"):
        return (shape[0], shape[2], shape[3], shape[1])
    if key.endswith("intermediate.kernel"):
        return shape[2:]
    if len(shape) == 4:  # conv (out, in, kh, kw) -> [kh, kw, in, out]
        return (shape[2], shape[3], shape[1], shape[0])
    if len(shape) == 2:  # dense (out, in) -> [in, out]
        return (shape[1], shape[0])
    return shape


def test_random_params_have_the_ffhq_1024_layout():
    params = jax.eval_shape(lambda: testing.random_stylegan_params(jax.random.key(0), 1024))
    ours = {}
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
        keys = [p.key for p in path]
        if keys[0] in ("synthesis", "mapping"):
            ours[(keys[0], ".".join(keys[1:]))] = tuple(leaf.shape)
    expected = {}
    for line in FFHQ_KEYS.read_text().splitlines()[1:]:
        network, key, shape = line.split("\t")
        shape = tuple(int(v) for v in shape.strip("()").split(",") if v.strip())
        expected[(network, key)] = _reference_shape(key, shape)
    assert ours == expected
    fit = params["gaussian_fit"]
    assert fit["mean"].shape == fit["std"].shape == (512,)


def test_random_generator_matches_its_arch():
    generator = benchmark.make_generator("stylegan64")
    assert generator.arch.channels == testing.channels_for(64, 16384, 512)
    assert generator.num_layers == 10
    assert np.all(np.asarray(generator.params["gaussian_fit"]["std"]) > 0)


@pytest.mark.slow
def test_stylegan2_case_runs():
    """The StyleGAN2 rows' generator (random weights of NVIDIA's layout) through one case."""
    results = benchmark.run(["stylegan2_16"], [1], steps=1, repeats=1, matmul_sizes=(64,))
    (case,) = results["cases"]
    assert case["generator"] == "stylegan2_16" and case["resolution"] == 16
    assert case["s_per_step"] > 0 and case["flops_per_step"] > 0
    generator = benchmark.make_generator("stylegan2_1024")
    assert generator.arch.channels == (512,) * 5 + (256, 128, 64, 32)
    assert generator.arch.num_ws == 18 and generator.arch.conv_clamp == 256.0
