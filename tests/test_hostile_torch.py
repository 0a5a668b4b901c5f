"""Hostile torch checkpoints (issue 16, kinds 1, 3, 4, 5 and 6): each is refused in one
line, in bounded time and memory, writes nothing, and leaves the next read exact."""

# ruff: noqa: B018  (the pickle assembler's opcodes are properties: `a.mark.tuple`)

from __future__ import annotations

import struct

import chex
import numpy as np
import pytest
from helpers.hostile import Asm, assert_refused, read_isolated
from helpers.torch_writer import save_torch_legacy, save_torch_zip, write_zip

from pulse_jax.checkpoints import CheckpointError, convert
from pulse_jax.checkpoints.torch_format import (
    load_state_dict,
    load_torch_bytes,
    load_torch_checkpoint,
)

GOOD = {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.array([1, -2], np.int64)}


def storage(a: Asm, key="0", numel=4, kind="FloatStorage") -> Asm:
    a.mark.str("storage").glob("torch", kind).str(key).str("cpu").int(numel).tuple
    return a.binpersid


def ints(a: Asm, values) -> Asm:
    a.mark
    for v in values:
        a.int(v)
    return a.tuple


def tensor(a: Asm, offset=0, size=(4,), stride=(1,), store=storage, **kw) -> Asm:
    a.glob("torch._utils", "_rebuild_tensor_v2").mark
    store(a, **kw)
    a.int(offset)
    ints(a, size)
    ints(a, stride)
    a.false.glob("collections", "OrderedDict").empty_tuple.reduce
    return a.tuple.reduce


def state_dict(value) -> bytes:
    a = Asm().empty_dict.str("w")
    value(a)
    return a.setitem.stop()


def assert_good_file_reads_exactly(tmp_path):
    """A good checkpoint read in this same process after the hostile one is exact."""
    path = tmp_path / "good.pt"
    save_torch_zip(GOOD, path)
    got = load_state_dict(path)
    assert list(got) == ["w", "b"]
    chex.assert_trees_all_equal(got, GOOD, strict=True)  # dtypes and shapes too


# name -> (write the file into a folder and return its path, reader, expected words)
VARIANTS: dict = {}


def variant(name: str, data: bytes, storages=None, match=None, reader="state_dict", **kw):
    def write(folder):
        return write_zip(folder / f"{name}.pt", data, {"0": bytes(16)} if storages is None
                         else storages, **kw)  # fmt: skip

    VARIANTS[name] = (write, reader, match)


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """Every variant, read in one child process under the address-space limit."""
    folder = tmp_path_factory.mktemp("hostile")
    paths = {name: write(folder) for name, (write, _, _) in VARIANTS.items()}
    found = read_isolated({name: (VARIANTS[name][1], path) for name, path in paths.items()})
    return {name: (paths[name], found[name]) for name in paths}


def check(outcomes, tmp_path, name):
    path, outcome = outcomes[name]
    assert_refused(outcome, path, VARIANTS[name][2])
    with pytest.raises(CheckpointError):  # in this process too, then a good file
        load_state_dict(path)
    assert_good_file_reads_exactly(tmp_path)
    return outcome


# --- kind 1: out-of-bounds reads -----------------------------------------------------------


def _build_on_storage(a):
    def built(a, **kw):
        storage(a, **kw)
        inner = Asm()
        tensor(inner, size=(2, 2), stride=(2, 1))
        a.empty_dict.str("raw").op(bytes(inner.data[2:])).setitem
        return a.build

    return tensor(a, size=(1000,), store=built)


def _tensor_as_storage(a):
    a.glob("torch._utils", "_rebuild_tensor_v2").mark
    tensor(a, size=(2, 2), stride=(2, 1))
    a.int(0)
    ints(a, (1000,))
    ints(a, (1,))
    a.false.glob("collections", "OrderedDict").empty_tuple.reduce
    return a.tuple.reduce


OUT_OF_BOUNDS = {
    "build_on_storage": (_build_on_storage, "BUILD"),
    "tensor_as_storage": (_tensor_as_storage, "storage is"),
    "offset_past_end": (lambda a: tensor(a, offset=10**6), "runs past"),
    "huge_stride": (lambda a: tensor(a, size=(2,), stride=(2**40,)), "runs past"),
    "negative_offset": (lambda a: tensor(a, offset=-1), "offset"),
    "negative_size": (lambda a: tensor(a, size=(-4,)), "shape"),
    "rank_40": (lambda a: tensor(a, size=(1,) * 40, stride=(1,) * 40), "sizes"),
}


for _name, (_make, _match) in OUT_OF_BOUNDS.items():
    variant(f"oob_{_name}", state_dict(_make), match=_match)


@pytest.mark.parametrize("name", OUT_OF_BOUNDS)
def test_out_of_bounds_views_are_refused(outcomes, tmp_path, name):
    check(outcomes, tmp_path, f"oob_{name}")


def test_convert_writes_nothing_for_an_out_of_bounds_checkpoint(tmp_path, golden_dir, capsys):
    bad = write_zip(tmp_path / "synthesis.pt", state_dict(_build_on_storage), {"0": bytes(16)})
    out = tmp_path / "out.npz"
    argv = ["pulse", "--synthesis", str(bad), "--gaussian_fit"]
    argv += [str(golden_dir / "gaussian_fit.pt"), "--out", str(out)]
    assert convert.main(argv) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and str(bad) in err and "Traceback" not in err
    assert not out.exists() and list(tmp_path.iterdir()) == [bad]


# --- kind 3: one file changing how the next is read ----------------------------------------


STATE_ON_SHARED = {
    "storage_type": ("torch", "FloatStorage", "dtype", "float64"),
    "rebuild_defaults": ("torch._utils", "_rebuild_tensor_v2", "__defaults__", "x"),
    "ordered_dict_class": ("collections", "OrderedDict", "fromkeys", "x"),
    "dtype_token": ("torch", "float32", "name", "int8"),
    "size": ("torch", "Size", "__new__", "x"),
}


for _name, (_module, _attribute, _key, _value) in STATE_ON_SHARED.items():
    _data = Asm().glob(_module, _attribute).empty_dict.str(_key).str(_value).setitem.build
    variant(f"shared_{_name}", _data.stop(), match="BUILD", reader="torch")


@pytest.mark.parametrize("name", STATE_ON_SHARED)
def test_build_on_allowed_globals_is_refused(outcomes, tmp_path, name):
    check(outcomes, tmp_path, f"shared_{name}")


# --- kind 4: checks that could be bypassed -------------------------------------------------


def _ordered_dict_with_state(state):
    a = Asm().glob("collections", "OrderedDict").empty_tuple.reduce.mark.str("w")
    tensor(a)
    a.setitems
    state(a)
    return a.build.stop()


ATTRIBUTE_STATES = {
    "items": lambda a: a.empty_dict.str("items").int(5).setitem,
    "keys": lambda a: a.empty_dict.str("keys").str("x").setitem,
    "class": lambda a: a.empty_dict.str("__class__").str("dict").setitem,
    "list_state": lambda a: a.empty_list,
}


@pytest.mark.parametrize("name", ATTRIBUTE_STATES)
def test_state_dict_cannot_carry_attributes(tmp_path, name):
    path = write_zip(
        tmp_path / "sd.pt", _ordered_dict_with_state(ATTRIBUTE_STATES[name]), {"0": bytes(16)}
    )
    try:
        got = load_state_dict(path)
    except CheckpointError as e:
        assert "\n" not in str(e) and str(path) in str(e)
    else:  # the state torch uses for `_metadata` is dropped: a plain dict of arrays
        assert type(got) is dict and list(got) == ["w"]
        np.testing.assert_array_equal(got["w"], np.zeros(4, np.float32))
        assert "items" not in vars(load_torch_checkpoint(path))
    assert_good_file_reads_exactly(tmp_path)


# --- kind 5: hangs from tiny files ---------------------------------------------------------


def dag(a: Asm, depth=40) -> Asm:
    a.empty_tuple
    for _ in range(depth):
        a.dup.tuple2()
    return a


HANGS = {
    "dag_as_key": (
        lambda: Asm().empty_dict.op(bytes(dag(Asm()).data[2:])).int(1).setitem.stop(),
        "expands",
    ),  # fmt: skip
    "dag_as_value": (lambda: state_dict(lambda a: dag(a)), "expands"),
    "deep_lists": (
        lambda: Asm().op(b"]" * 100_000 + b"a" * 99_999).stop(),
        "the pickle's objects",
    ),  # its lists are counted first
    "deep_marks": (lambda: Asm().op(b"(" * 100_000).stop(), "deeper"),
    "huge_text_int": (lambda: Asm().op(b"L" + b"9" * 1_000_000 + b"L\n").stop(), "line"),
}


for _name, (_make, _match) in HANGS.items():
    variant(f"hang_{_name}", _make(), match=_match, reader="torch")


@pytest.mark.parametrize("name", HANGS)
def test_tiny_files_that_would_hang_are_refused(outcomes, tmp_path, name):
    check(outcomes, tmp_path, f"hang_{name}")


def _legacy_with_dag(folder):
    path = folder / "legacy_dag.pt"
    save_torch_legacy({"w": np.ones(2, np.float32)}, path)
    data = path.read_bytes()
    # The DAG goes into the sys_info record, the third pickle (after PROTO, EMPTY_DICT).
    third = data.index(b"}", data.index(b".", data.index(b".", 2) + 1) + 1)
    path.write_bytes(data[:third] + bytes(dag(Asm()).data[2:]) + b"0" + data[third:])
    return path


VARIANTS["hang_legacy_sys_info_dag"] = (_legacy_with_dag, "torch", "expands")


def test_legacy_file_with_a_dag_is_refused(outcomes, tmp_path):
    check(outcomes, tmp_path, "hang_legacy_sys_info_dag")


# --- kind 6: gigabytes from bytes ----------------------------------------------------------


variant(
    "big_stride_zero",
    state_dict(
        lambda a: tensor(a, size=(1 << 16, 1 << 16), stride=(0, 0), numel=1, kind="ByteStorage")
    ),
    {"0": b"\x01"},
    match="zero stride",
)
variant(
    "big_trillion_elements",
    state_dict(lambda a: tensor(a, size=(10**6, 10**6), stride=(10**6, 1))),
    match="runs past",
)
_ZEROS = bytes(64 << 20)
variant("big_zip_bomb_storage", state_dict(lambda a: tensor(a)), {"0": _ZEROS}, compress=True,
        match="more than the file could honestly hold", reader="torch")  # fmt: skip
variant("big_zip_bomb_pickle", _ZEROS, {}, compress=True,
        match="more than the file could honestly hold", reader="torch")  # fmt: skip
variant(
    "big_message",
    Asm().empty_dict.str("k" * 10_000_000).str("v" * 1_000_000).setitem.stop(),
    {},
    match="not a flat state dict",
)


@pytest.mark.parametrize(
    "name", ["stride_zero", "trillion_elements", "zip_bomb_storage", "zip_bomb_pickle", "message"]
)
def test_gigabytes_from_bytes_are_refused(outcomes, tmp_path, name):
    outcome = check(outcomes, tmp_path, f"big_{name}")
    assert len(outcome.refused) < 300
    assert outcomes[f"big_{name}"][0].stat().st_size < 12 << 20


def test_memory_stays_bounded(outcomes):
    """The child's peak resident memory over every variant (JAX's import included)."""
    peak = max(outcome.max_rss_mb for _, outcome in outcomes.values())
    assert peak < 1024, peak


def test_load_torch_bytes_reads_in_memory_payloads_under_the_same_limits(tmp_path):
    path = tmp_path / "good.pt"
    save_torch_legacy(GOOD, path)
    got = load_torch_bytes("payload in good.pkl", path.read_bytes())
    chex.assert_trees_all_equal(got, GOOD)
    bomb = state_dict(lambda a: tensor(a, size=(1 << 16, 1 << 16), stride=(0, 0)))
    write_zip(path, bomb, {"0": bytes(16)})
    with pytest.raises(CheckpointError, match="payload in good.pkl: .*zero stride"):
        load_torch_bytes("payload in good.pkl", path.read_bytes())


def _legacy_overflow(folder):
    path = folder / "legacy_overflow.pt"
    save_torch_legacy({"w": np.ones(8, np.float32)}, path)
    data = bytearray(path.read_bytes())
    struct.pack_into("<q", data, len(data) - 8 - 32, 1 << 61)
    path.write_bytes(bytes(data))
    return path


VARIANTS["big_legacy_count"] = (_legacy_overflow, "torch", "truncated")


def test_legacy_storage_count_cannot_overflow(outcomes, tmp_path):
    check(outcomes, tmp_path, "big_legacy_count")
