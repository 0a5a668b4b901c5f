"""The search compiles for chips that are not here: a TPU slice (libtpu, the `tpu` extra, which
CI installs) and an H100 (jax's CUDA plugin, the `cuda` extra: too large for CI,
so its tests run where it is installed). Compile-only devices come from
`jax.experimental.topologies` (`experiments/plan_lib.py`); `pulse_jax.lower` lowers from
abstract values, so nothing is placed on them.

Each compile asserts: it compiles, XLA's memory analysis is read, and no collective runs inside
the step loop (rows are independent; `plan_lib.loop_collectives`, whose detection a program
with a collective in its loop checks).
"""

from __future__ import annotations

import importlib.util
import json
import os

os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")  # compile-only: no TPU is opened

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import plan_lib  # noqa: E402
import pytest  # noqa: E402
from helpers.generators import small_stylegan_generator
from jax.sharding import Mesh, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import pulse_jax  # noqa: E402
from pulse_jax import SearchOptions  # noqa: E402
from pulse_jax.degrade import operators  # noqa: E402
from pulse_jax.problem import make_problem  # noqa: E402
from pulse_jax.runs.sweep import plan_batch_size  # noqa: E402

HAS_TPU = importlib.util.find_spec("libtpu") is not None
HAS_CUDA = importlib.util.find_spec("jax_cuda12_plugin") is not None
needs_tpu = pytest.mark.skipif(not HAS_TPU, reason="libtpu (the 'tpu' extra) is not installed")
needs_cuda = pytest.mark.skipif(
    not HAS_CUDA, reason="jax's CUDA plugin (the 'cuda' extra) is not installed"
)


@pytest.fixture(scope="module")
def generator():
    return small_stylegan_generator(0)


@pytest.fixture(scope="module")
def v5e():
    return plan_lib.TARGETS["tpu-v5e:2x2"], plan_lib.devices(plan_lib.TARGETS["tpu-v5e:2x2"])


@pytest.fixture(scope="module")
def h100():
    return plan_lib.TARGETS["h100"], plan_lib.devices(plan_lib.TARGETS["h100"])


def check_case(row: dict) -> None:
    assert row["compiles"], row.get("error")
    assert row["argument_bytes"] > 0 and row["total_bytes"] >= row["argument_bytes"]
    assert row["fits"]
    assert row["loop_collectives"] == []
    assert row["flops"] > 0 and row["roofline_s"] > 0


def test_lower_from_abstract_values_is_the_program_solve_places(generator):
    """`lower` places nothing, and its program is the one the placed arrays give."""
    solve_module = importlib.import_module("pulse_jax.solve")
    lr = np.random.default_rng(0).uniform(size=(3, 4, 4, 3)).astype(np.float32)
    cpu = jax.devices()[0]
    for devices, batch in (([cpu], None), ([cpu], 2)):  # one-device, then grouped sharded
        problem, _ = make_problem(lr, generator, SearchOptions(steps=2))
        call = solve_module._plan(devices, batch, problem.ref.shape[0])
        problem = solve_module._planned(problem, call)
        abstract = call.abstract(problem)
        assert not any(isinstance(x, jax.Array) for x in jax.tree.leaves(abstract))
        placed = call.fn.lower(call.place(problem)).as_text()
        assert call.fn.lower(abstract).as_text() == placed
    assert pulse_jax.lower(lr, generator, devices=[cpu], batch_per_device=2, steps=2).as_text()


@needs_tpu
def test_plan_of_a_tpu_chip(generator, tmp_path):
    """One chip through the plan command's `run`: the row, the fit, the table and files."""
    case = {
        "name": "small",
        "precision": "highest",
        "generator": generator,
        "options": SearchOptions(steps=2),
    }
    results = plan_lib.run([case], ["tpu-v5e:2x2"], [2], lr_size=4)
    (row,) = results["rows"]
    check_case(row)
    assert row["cost_source"] == "compiled"  # the TPU compiler's own count
    assert results["largest"][0]["measured"] == 2
    json_path, md_path = plan_lib.write(results, tmp_path)
    assert json.loads(json_path.read_text())["rows"][0]["compiles"]
    assert plan_lib.format_row(row) in md_path.read_text()


@needs_tpu
def test_sharded_group_compiles_for_four_tpu_chips(generator, v5e):
    target, devices = v5e
    row = plan_lib.compile_case(
        generator, target, devices, 2, SearchOptions(steps=2), chips=4, lr_size=4
    )
    check_case(row)


@needs_tpu
def test_a_collective_in_the_loop_is_found(v5e):
    """The check that must find nothing in the search finds a psum inside a loop."""
    _, devices = v5e
    mesh = Mesh(np.asarray(devices), ("samples",))

    def body(_, x):
        return x * 0.5 + jax.lax.psum(x, "samples")

    loop = jax.shard_map(
        lambda x: jax.lax.fori_loop(0, 3, body, x),
        mesh=mesh,
        in_specs=P("samples"),
        out_specs=P("samples"),
    )
    x = jax.ShapeDtypeStruct((4, 128), jnp.float32, sharding=NamedSharding(mesh, P("samples")))
    found = plan_lib.loop_collectives(jax.jit(loop).lower(x).compile().as_text())
    assert found and all(f.startswith("all-reduce") for f in found), found


@needs_cuda
@pytest.mark.parametrize("remat", [False, True])
def test_search_compiles_for_an_h100(generator, h100, remat):
    target, devices = h100
    row = plan_lib.compile_case(
        generator, target, devices, 2, SearchOptions(steps=2), lr_size=4, remat=remat
    )
    check_case(row)


@needs_cuda
@pytest.mark.parametrize("name", list(operators.OperatorName))
def test_operator_gradients_compile_for_an_h100_at_1024_px(h100, name):
    """The bicubic's (and the other separable operators') transposed matmul once failed XLA's
    GPU tiling at 1024 px under default flags (issue 20)."""
    _, devices = h100
    one = jax.sharding.SingleDeviceSharding(devices[0])
    op = operators.make_operator(name, 32, 32)
    images = jax.ShapeDtypeStruct((4, 1024, 1024, 3), jnp.float32, sharding=one)
    target = jax.ShapeDtypeStruct((4, 32, 32, 3), jnp.float32, sharding=one)
    loss = jax.grad(lambda x, y: jnp.mean((op(x) - y) ** 2))
    assert jax.jit(loss).lower(images, target).compile().memory_analysis() is not None


def test_a_target_without_its_extra_is_one_line(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(plan_lib.MissingExtra) as error:
        plan_lib.check_installed(plan_lib.TARGETS["h100"])
    assert "'cuda' extra" in str(error.value) and "\n" not in str(error.value)


@needs_tpu
def test_plan_batch_size_on_a_compile_only_chip(generator, v5e):
    """`--plan_memory`'s planner takes a compile-only device and the chip's memory."""
    target, devices = v5e
    (row,) = plan_batch_size(
        generator,
        4,
        SearchOptions(steps=2),
        largest=1,
        device=devices[0],
        limit_bytes=target.memory_bytes,
    )
    assert row["batch_per_device"] == 1 and row["fits"] and row["total_bytes"] > 0
