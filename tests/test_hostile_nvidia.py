"""Hostile NVIDIA pickles (issue 16, kinds 2, 3, 4, 5 and 6): each is refused in one
line, in bounded time and memory, without a crash, and the next read is exact."""

# ruff: noqa: B018  (the pickle assembler's opcodes are properties: `a.mark.tuple`)

from __future__ import annotations

import chex
import pytest
from helpers.hostile import NUMPY, Asm, array, assert_refused, dag, dtype, read_isolated
from helpers.stylegan_tf_writer import make_case

from pulse_jax.checkpoints import CheckpointError
from pulse_jax.checkpoints.stylegan_tf import read_nvidia_pickle


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """An official-structure pickle (32 px, 16 dlatents so it is small) and the numbers it
    must read back as."""
    path, _, syn, mapping, _ = make_case(tmp_path_factory.mktemp("good"), 32, dlatent=16)
    return path, syn, mapping


def assert_good_reads_exactly(good):
    path, syn, mapping = good
    got_syn, got_mapping, _ = read_nvidia_pickle(path)
    assert list(got_syn) == list(syn) and list(got_mapping) == list(mapping)
    chex.assert_trees_all_equal((got_syn, got_mapping), (syn, mapping))


# name -> (the pickle's bytes, expected words)
VARIANTS: dict[str, tuple[bytes, str]] = {}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every variant, read in one child process under the address-space limit."""
    folder = tmp_path_factory.mktemp("hostile")
    paths = {}
    for name, (data, _) in VARIANTS.items():
        paths[name] = folder / f"{name}.pkl"
        paths[name].write_bytes(data)
    found = read_isolated({name: ("nvidia", path) for name, path in paths.items()})
    return {name: (paths[name], found[name]) for name in paths}


def check(outcomes, good, name):
    path, outcome = outcomes[name]
    assert_refused(outcome, path, VARIANTS[name][1])
    with pytest.raises(CheckpointError):  # in this process too, then a good file
        read_nvidia_pickle(path)
    assert_good_reads_exactly(good)
    return outcome


# --- kind 2: a crash from a small file -----------------------------------------------------


def _object_fields(a):
    # a dtype whose BUILD state describes fields holding Python objects over raw bytes
    dtype(a, "f4").mark.int(3).str("|").none.mark.str("x").tuple.empty_dict.str("x")
    dtype(a, "f4").mark.int(3).str("|").none.none.none.int(-1).int(-1).int(63).tuple.build
    a.int(0).tuple2().setitem.int(8).int(1).int(63).tuple
    return a.build


CRASHES = {
    "object_dtype": (lambda a: array(a, (2,), bytes(16), lambda a: dtype(a, "O")), "element"),
    "void_dtype": (lambda a: array(a, (2,), bytes(16), lambda a: dtype(a, "V8")), "element"),
    "object_fields": (lambda a: array(a, (2,), bytes(16), _object_fields), "state"),
    "refcount_flags": (
        lambda a: (
            dtype(a, "f4").mark.int(3).str("<").none.none.none.int(-1).int(-1).int(1).tuple.build
        ),  # fmt: skip
        "state",
    ),
    "object_scalar": (
        lambda a: (
            a.glob(NUMPY, "scalar")
            .mark.op(bytes(dtype(Asm(), "O").data[2:]))
            .bytes(bytes(8))
            .tuple.reduce
        ),  # fmt: skip
        "element",
    ),
    "ndarray_called": (
        lambda a: a.glob("numpy", "ndarray").mark.int(10**6).tuple.reduce,
        "never calls",
    ),
}


VARIANTS.update({f"crash_{n}": (make(Asm(4)).stop(), m) for n, (make, m) in CRASHES.items()})


@pytest.mark.parametrize("name", CRASHES)
def test_dtypes_that_could_crash_are_refused(outcomes, good, name):
    check(outcomes, good, f"crash_{name}")


# --- kind 3: one file changing how the next is read ----------------------------------------


SHARED = {
    "network_class": ("dnnlib.tflib.network", "Network"),
    "easydict_class": ("dnnlib.util", "EasyDict"),
    "dtype_class": ("numpy", "dtype"),
    "reconstruct": (NUMPY, "_reconstruct"),
    "scalar": (NUMPY, "scalar"),
}


for _name, (_module, _attribute) in SHARED.items():
    _data = Asm(4).glob(_module, _attribute).empty_dict.str("__setstate__").int(1).setitem
    VARIANTS[f"shared_{_name}"] = (_data.build.stop(), "BUILD")
_twice = Asm(4).glob("dnnlib.tflib.network", "Network").empty_tuple.newobj
_index = _twice.put()
_twice.empty_dict.build.get(_index).empty_dict.build
VARIANTS["shared_network_twice"] = (_twice.stop(), "BUILD")


@pytest.mark.parametrize("name", [*SHARED, "network_twice"])
def test_build_on_allowed_globals_is_refused(outcomes, good, name):
    check(outcomes, good, f"shared_{name}")


# --- kind 4: checks that could be bypassed -------------------------------------------------


ATTRIBUTES = ["items", "keys", "__class__"]
for _attribute in ATTRIBUTES:
    _a = Asm(4).glob("dnnlib.util", "EasyDict").empty_tuple.newobj
    _a.empty_dict.str(_attribute).int(1).setitem.build
    VARIANTS[f"attribute_{_attribute}"] = (_a.stop(), "attributes")


@pytest.mark.parametrize("attribute", ATTRIBUTES)
def test_easydict_cannot_carry_attributes(outcomes, good, attribute):
    check(outcomes, good, f"attribute_{attribute}")


# --- kind 5 and 6: hangs and gigabytes -----------------------------------------------------


BIG = {
    "dag": (lambda a: dag(a), "expands"),
    "dag_key": (lambda a: a.empty_dict.op(bytes(dag(Asm(), 10).data[2:])).int(1).setitem, "key"),
    "trillion_elements": (lambda a: array(a, (10**6, 10**6), bytes(4)), "bytes"),
    "bytes_short": (lambda a: array(a, (4,), bytes(15)), "bytes"),
    "negative_shape": (lambda a: array(a, (-1,), b""), "shape"),
    "set": (lambda a: a.op(b"\x8f"), "EMPTY_SET"),
}


VARIANTS.update({f"big_{n}": (make(Asm(4)).stop(), m) for n, (make, m) in BIG.items()})


@pytest.mark.parametrize("name", BIG)
def test_hangs_and_huge_arrays_are_refused(outcomes, good, name):
    outcome = check(outcomes, good, f"big_{name}")
    assert outcome.seconds < 5 and outcome.max_rss_mb < 1024
