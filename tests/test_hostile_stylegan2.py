"""Hostile StyleGAN2 files (issue 16's kinds 1-6 for the readers of issue 12): NVIDIA
StyleGAN2-ADA pickles, rosinality `.pt` files and NVIDIA TF StyleGAN2 pickles, each
refused in one line, in bounded time and memory, without a crash; the converter writes
nothing, and the next good file reads exactly."""

# ruff: noqa: B018  (the pickle assembler's opcodes are properties: `a.mark.tuple`)

from __future__ import annotations

import json
from pathlib import Path

import chex
import numpy as np
import pytest
from helpers import ada_writer
from helpers.hostile import (
    NETWORK,
    PERSISTENCE,
    Asm,
    ada,
    array,
    assert_refused,
    dag,
    dtype,
    read_isolated,
    tf,
)
from helpers.torch_writer import Call, Global, TensorView, save_torch_legacy, save_torch_zip

from pulse_jax.checkpoints import CheckpointError, convert, weights_file
from pulse_jax.checkpoints.loading import load_generator
from pulse_jax.checkpoints.stylegan2_formats import read_stylegan2

GOLDEN = Path(__file__).parent / "golden" / "stylegan2"


def ada_good(path) -> Path:
    """A valid 8 px ADA pickle cut from the golden one."""
    ada_writer.write_ada_pickle(path, ada_writer.small_tree(GOLDEN / "sg2ada_clamp.pkl"))
    return path


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """The good files and the states they must read back as (read before any hostile one)."""
    folder = tmp_path_factory.mktemp("good")
    rosinality = folder / "rosinality.pt"
    save_torch_zip(
        {"g_ema": ada_writer.tiny_rosinality_state(), "latent_avg": np.ones(8, np.float32)},
        rosinality,
    )
    paths = [ada_good(folder / "ada.pkl"), rosinality]
    return [(path, read_stylegan2(path).state) for path in paths]


def assert_good_reads_exactly(good):
    for path, state in good:
        got = read_stylegan2(path).state
        assert list(got) == list(state)
        chex.assert_trees_all_equal(got, state)


# --- pickle pieces -------------------------------------------------------------------------


def ints(a: Asm, values) -> Asm:
    a.mark
    for v in values:
        a.int(v)
    return a.tuple


def payload(array_: np.ndarray) -> bytes:
    """A `_load_from_bytes` payload: the legacy torch.save of one storage."""
    return ada_writer.storage_bytes(array_)


def tensor(a: Asm, size, stride, raw: bytes, offset: int = 0) -> Asm:
    """`_rebuild_tensor_v2(_load_from_bytes(raw), offset, size, stride, False, OrderedDict())`."""
    a.glob("torch._utils", "_rebuild_tensor_v2").mark
    a.glob("torch.storage", "_load_from_bytes").mark.bytes(raw).tuple.reduce
    a.int(offset)
    ints(a, size)
    ints(a, stride)
    a.false.glob("collections", "OrderedDict").empty_tuple.reduce.tuple
    return a.reduce


def persistent(a: Asm, state=lambda a: a.empty_dict) -> Asm:
    a.glob(*PERSISTENCE).mark.empty_dict
    a.str("type").str("class").setitem.str("version").int(4).setitem
    a.str("module_src").str("# never run\n").setitem.str("class_name").str("Generator").setitem
    a.str("state")
    state(a)
    return a.setitem.tuple.reduce


def built_twice() -> bytes:
    """A numpy dtype BUILT, then BUILT again through the memo (state set twice)."""
    a = ada(Asm(4))
    dtype(a, "f4")
    index = a.put()
    a.mark.int(3).str("<").none.none.none.int(-1).int(-1).int(0).tuple.build.op(b"0")
    a.get(index).mark.int(3).str(">").none.none.none.int(-1).int(-1).int(0).tuple.build
    return a.stop()


def claims_more() -> bytes:
    """A payload whose storage declares 10^12 elements over 4 bytes."""
    raw = payload(np.zeros(1, np.float32))
    raw = raw[:-12] + np.int64(10**12).tobytes() + raw[-4:]
    return ada(tensor(Asm(4), (1,), (1,), raw)).stop()


def scalar(module: str, code: str) -> bytes:
    a = ada(Asm(4)).glob(module, "scalar").mark
    return a.op(bytes(dtype(Asm(), code).data[2:])).bytes(bytes(8)).tuple.reduce.stop()


def dag_state(a: Asm) -> Asm:
    return dag(a.empty_dict.str("x"), 40).setitem


F32 = np.zeros(4, np.float32)
ONE = np.zeros(1, np.float32)
LFB = ("torch.storage", "_load_from_bytes")

# name -> (bytes, expected words)
ADA: dict[str, tuple[bytes, str]] = {
    # kind 3: BUILD on what the read did not just make, or on what the format never builds
    "build_on_persistent": (persistent(ada(Asm(4))).empty_dict.build.stop(), "BUILD"),
    "build_on_reconstruct_global": (
        ada(Asm(4)).glob(*PERSISTENCE).empty_dict.str("x").int(1).setitem.build.stop(),
        "BUILD",
    ),
    "build_on_load_from_bytes": (ada(Asm(4)).glob(*LFB).empty_dict.build.stop(), "BUILD"),
    "build_on_storage": (
        ada(Asm(4)).glob(*LFB).mark.bytes(payload(F32)).tuple.reduce.empty_dict.build.stop(),
        "BUILD",
    ),
    "build_on_easydict_class": (
        ada(Asm(4)).glob("dnnlib.util", "EasyDict").empty_dict.build.stop(),
        "BUILD",
    ),
    "build_dtype_twice": (built_twice(), "BUILD"),
    # kind 5: DAG tuples, as a value, as a dict key, in a set
    "dag_state": (persistent(ada(Asm(4)), dag_state).stop(), "expands"),
    "dag_key": (
        ada(Asm(4)).empty_dict.op(bytes(dag(Asm(), 10).data[2:])).int(1).setitem.stop(),
        "key",
    ),
    "set_of_tuples": (
        ada(Asm(4)).op(b"\x8f").mark.op(bytes(dag(Asm(), 3).data[2:])).op(b"\x90").stop(),
        "set item",
    ),
    # kinds 1 and 6: tensors inside _load_from_bytes payloads
    "zero_stride": (ada(tensor(Asm(4), (1 << 16, 1 << 16), (0, 0), payload(ONE))).stop(), "zero"),
    "past_storage": (ada(tensor(Asm(4), (100,), (1,), payload(F32))).stop(), "runs past"),
    "offset_past": (ada(tensor(Asm(4), (2,), (1,), payload(F32), offset=3)).stop(), "runs past"),
    "huge_declared": (
        ada(tensor(Asm(4), (10**6, 10**6), (10**6, 1), payload(ONE))).stop(),
        "runs past",
    ),
    "payload_claims_more": (claims_more(), "truncated"),
    "payload_not_bytes": (ada(Asm(4)).glob(*LFB).mark.int(3).tuple.reduce.stop(), "not bytes"),
    "payload_of_garbage": (
        ada(Asm(4)).glob(*LFB).mark.bytes(b"\x80\x02junk").tuple.reduce.stop(),
        "tensor storage",
    ),
    "object_scalar": (scalar("numpy._core.multiarray", "O"), "element"),
    # hostile globals
    "os_system": (
        ada(Asm(4)).glob("os", "system").mark.str("touch pwned").tuple.reduce.stop(),
        "refused global 'os.system'",
    ),
    "builtins_eval": (
        ada(Asm(4)).glob("builtins", "eval").mark.str("1").tuple.reduce.stop(),
        "refused global 'builtins.eval'",
    ),
    "v1_network_in_ada": (ada(Asm(4)).glob(*NETWORK).empty_tuple.newobj.stop(), "refused global"),
}

TF: dict[str, tuple[bytes, str]] = {
    "network_built_twice": (
        (lambda a: a.get(a.put()).empty_dict.build.op(b"0").empty_dict.build)(
            tf(Asm(4)).glob(*NETWORK).empty_tuple.newobj
        ).stop(),
        "BUILD",
    ),
    "build_on_network_class": (tf(Asm(4)).glob(*NETWORK).empty_dict.build.stop(), "BUILD"),
    "dag_state": (
        tf(Asm(4))
        .glob(*NETWORK)
        .empty_tuple.newobj.op(b"}")
        .str("name")
        .op(bytes(dag(Asm(), 40).data[2:]))
        .setitem.build.stop(),
        "expands",
    ),
    "object_array": (tf(array(Asm(4), (2,), bytes(16), lambda a: dtype(a, "O"))).stop(), "element"),
    "trillion_elements": (tf(array(Asm(4), (10**6, 10**6), bytes(4))).stop(), "bytes"),
    "os_system": (
        tf(Asm(4)).glob("os", "system").mark.str("touch pwned").tuple.reduce.stop(),
        "refused global 'os.system'",
    ),
    "persistence_in_tf": (tf(Asm(4)).glob(*LFB).mark.bytes(b"x").tuple.reduce.stop(), "refused"),
}


def rosinality_variants(folder: Path) -> dict[str, tuple[Path, str]]:
    """Hostile rosinality `.pt` files, written by the torch writer."""
    sd = ada_writer.tiny_rosinality_state()
    cases = {
        "os_system_in_args": (
            {"g_ema": sd, "args": Call(Global("os", "system"), ("touch pwned",))},
            "global 'os.system'",
        ),
        "zero_stride_weight": (
            {"g_ema": sd | {"style.1.weight": TensorView(ONE, 0, (1 << 14, 1 << 14), (0, 0))}},
            "zero stride",
        ),
        "weight_past_storage": (
            {"g_ema": sd | {"style.1.weight": TensorView(F32, 0, (8, 8), (8, 1))}},
            "runs past",
        ),
        "namespace_with_arguments": (
            {"g_ema": sd, "args": Call(Global("argparse", "Namespace"), (1,))},
            "never calls",
        ),
        "dag_in_args": ({"g_ema": sd, "args": _dag_value(30)}, "expands"),
        "not_a_generator": ({"g_ema": {"style.1.weight": "a string"}}, "has no"),
    }
    written = {}
    for i, (name, (content, words)) in enumerate(cases.items()):
        path = folder / f"rosinality_{name}.pt"
        (save_torch_zip if i % 2 else save_torch_legacy)(content, path)
        written[name] = (path, words)
    return written


def _dag_value(depth: int):
    value = ()
    for _ in range(depth):
        value = (value, value)
    return value


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, good):
    """Every variant, read in turn in one child process under the address-space limit."""
    folder = tmp_path_factory.mktemp("hostile")
    cases = rosinality_variants(folder)
    for prefix, variants in (("ada", ADA), ("tf", TF)):
        for name, (data, words) in variants.items():
            path = folder / f"{prefix}_{name}.pkl"
            path.write_bytes(data)
            cases[f"{prefix}_{name}"] = (path, words)
    found = read_isolated({name: ("stylegan2", path) for name, (path, _) in cases.items()})
    return {name: (path, words, found[name]) for name, (path, words) in cases.items()}


NAMES = [f"ada_{n}" for n in ADA] + [f"tf_{n}" for n in TF]
NAMES += [
    "os_system_in_args",
    "zero_stride_weight",
    "weight_past_storage",
    "namespace_with_arguments",
    "dag_in_args",
    "not_a_generator",
]


@pytest.mark.parametrize("name", NAMES)
def test_hostile_stylegan2_file_is_refused_in_one_line(outcomes, good, name):
    path, words, outcome = outcomes[name]
    assert_refused(outcome, path, words)
    assert outcome.seconds < 5 and outcome.max_rss_mb < 1024
    with pytest.raises(CheckpointError):  # in this process too, then the good files
        read_stylegan2(path)
    assert_good_reads_exactly(good)


def test_every_reader_has_several_variants():
    assert len(ADA) >= 15 and len(TF) >= 5
    assert len([n for n in NAMES if not n.startswith(("ada_", "tf_"))]) >= 5


def test_convert_writes_nothing_for_hostile_files_then_converts_a_good_one(
    outcomes, good, tmp_path, capsys
):
    out = tmp_path / "out.npz"
    for name in ("ada_zero_stride", "ada_build_on_storage", "tf_os_system", "dag_in_args"):
        path = outcomes[name][0]
        code = convert.main(["stylegan2", "--checkpoint", str(path), "--out", str(out)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and str(path) in lines[0], lines
        assert not out.exists() and not list(tmp_path.iterdir())
    good_ada = good[0][0]
    argv = ["stylegan2", "--checkpoint", str(good_ada), "--out", str(out), "--fit_samples", "16"]
    assert convert.main(argv) == 0
    assert out.exists()


def _weights_variants(good_npz: Path, folder: Path) -> dict[str, tuple[Path, str]]:
    """Malformed stylegan2 weights files: the good file's members, one field broken."""
    arrays = weights_file.read_arrays(good_npz)
    meta = json.loads(arrays["__meta__"].tobytes())

    def with_meta(**config):
        changed = dict(meta, config=dict(meta["config"], **config))
        return {"__meta__": np.frombuffer(json.dumps(changed).encode(), np.uint8)}

    w_dim = arrays["params/mapping/w_avg"].shape[0]
    broken = {
        "noise_buffer_shape": (
            {"params/synthesis/b8/conv1/noise_const": np.zeros((4, 4), "f4")},
            "noise_const",
        ),
        "missing_noise_buffer": ({"params/synthesis/b8/conv0/noise_const": None}, "missing"),
        "w_avg_nan": ({"params/mapping/w_avg": np.full(w_dim, np.nan, "f4")}, "NaN"),
        "fit_too_short": ({"gaussian_fit/mean": np.zeros(w_dim - 1, "f4")}, "gaussian_fit/mean"),
        "num_ws": (with_meta(num_ws=99), "config.num_ws"),
        "conv_clamp_string": (with_meta(conv_clamp="256"), "config.conv_clamp"),
        "resolution_2_33": (with_meta(resolution=2**33), "config.resolution"),
        "channels_huge": (with_meta(channels=[10**6, 4]), "config.channels"),
        "mapping_lr_zero": (with_meta(mapping_lr=0), "config.mapping_lr"),
    }
    written = {}
    for name, (change, words) in broken.items():
        content = {k: v for k, v in (arrays | change).items() if v is not None}
        path = folder / f"weights_{name}.npz"
        np.savez(path, **content)
        written[name] = (path, words)
    return written


def test_malformed_stylegan2_weights_files_are_refused_by_load_generator(good, tmp_path):
    out = tmp_path / "good.npz"
    argv = ["stylegan2", "--checkpoint", str(good[0][0]), "--out", str(out), "--fit_samples", "16"]
    assert convert.main(argv) == 0
    reference = load_generator(out)
    cases = _weights_variants(out, tmp_path)
    assert len(cases) >= 8
    found = read_isolated({name: ("generator", path) for name, (path, _) in cases.items()})
    for name, (path, words) in cases.items():
        assert_refused(found[name], path, words)
    again = load_generator(out)  # the good file still reads exactly
    chex.assert_trees_all_equal(again.params, reference.params)
