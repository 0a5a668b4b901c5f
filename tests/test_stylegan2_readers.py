"""Tests for the StyleGAN2 readers (pulse_jax/checkpoints/stylegan2_*.py).

The golden files (tests/golden/stylegan2/) are NVIDIA's and rosinality's own
writers' output; the variants (hostile, conditional, StyleGAN3, training
checkpoints, TF pickles, the full FFHQ layouts) are written here from them or
from the real key tables (tests/data/). Parity of the *images* is
tests/test_stylegan2.py's; here every key, shape and number of the converted
state is checked against what the files hold.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import pickle
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import chex
import numpy as np
import pytest
from helpers import ada_writer
from helpers.stylegan_tf_writer import tf_pickle_from_ada, write_pickle
from helpers.torch_writer import Call, Global, save_torch_legacy, save_torch_zip

from pulse_jax.checkpoints import CheckpointError, stylegan2_layout, torch_format
from pulse_jax.checkpoints.stylegan2_ada import PersistentObject
from pulse_jax.checkpoints.stylegan2_formats import (
    StyleGAN2Checkpoint,
    _pickle_globals,
    detect_format,
    read_stylegan2,
)
from pulse_jax.checkpoints.stylegan2_rosinality import mean_latent

GOLDEN = Path(__file__).parent / "golden" / "stylegan2"
DATA = Path(__file__).parent / "data"
ADA_TINY = GOLDEN / "sg2ada_tiny.pkl"
ADA_CLAMP = GOLDEN / "sg2ada_clamp.pkl"
ROSINALITY_TINY = GOLDEN / "sg2_rosinality_tiny.pt"
TINY_CHANNELS = {4: 64, 8: 64, 16: 64, 32: 32, 64: 16}  # the golden README's ADA generator


def key_table(name: str) -> dict[str, tuple[int, ...]]:
    lines = (DATA / name).read_text().splitlines()[1:]
    return {
        k: tuple(int(d) for d in re.findall(r"\d+", s)) for k, s in (x.split("\t") for x in lines)
    }


def tiny_shapes(channels=TINY_CHANNELS, mapping_layers=2) -> dict[str, tuple[int, ...]]:
    return stylegan2_layout.expected_shapes(64, channels, 512, 3, [(512, 512)] * mapping_layers)


def tiny_config(conv_clamp) -> dict:
    """The config every reader gives the tiny 64 px goldens (2 mapping layers)."""
    return {
        "z_dim": 512,
        "w_dim": 512,
        "img_resolution": 64,
        "img_channels": 3,
        "num_ws": 10,
        "mapping_layers": 2,
        "c_dim": 0,
        "conv_clamp": conv_clamp,
        "lr_multiplier": 0.01,
    }


def one_line(error: pytest.ExceptionInfo, path) -> str:
    message = str(error.value)
    assert "\n" not in message and message.startswith(str(path)), message
    return message


# --- NVIDIA StyleGAN2-ADA pickles ----------------------------------------------------------


@pytest.mark.parametrize(
    "path,protocol,numpy_module,clamp,networks",
    [
        (
            ADA_TINY,
            3,
            "numpy.core.multiarray",
            256.0,
            ["training_set_kwargs", "G", "D", "G_ema", "augment_pipe"],
        ),
        (ADA_CLAMP, 4, "numpy._core.multiarray", 0.5, ["G_ema"]),
    ],
)
def test_ada_golden_pickles_read(path, protocol, numpy_module, clamp, networks):
    data = path.read_bytes()
    assert data[:2] == bytes([0x80, protocol])
    assert (
        _pickle_globals(io.BytesIO(data))[-1]
        == "torch_utils.persistence._reconstruct_persistent_obj"
    )
    assert numpy_module.encode() in data  # numpy 1.x or 2.x names for the numpy scalars

    ck = read_stylegan2(path)

    assert isinstance(ck, StyleGAN2Checkpoint) and ck.format == "ada-pickle"
    assert ck.config == tiny_config(conv_clamp=clamp)
    shapes = tiny_shapes()
    assert list(ck.state) == list(shapes)  # every key, in ADA's state_dict order
    for key, value in ck.state.items():
        assert value.shape == shapes[key] and value.dtype == np.float32, key
    assert ck.source["networks"] == networks
    assert ck.source["sha256"] == hashlib.sha256(data).hexdigest()
    # The numbers are the file's: w_avg as NVIDIA's own code saw it (the forward golden),
    # the resampling filters NVIDIA's setup_filter([1, 3, 3, 1]).
    w_avg = np.load(GOLDEN / "sg2ada_forward.npz")["w_avg"]
    np.testing.assert_array_equal(ck.state["mapping.w_avg"], w_avg)
    for key in shapes:
        if key.endswith("resample_filter"):
            np.testing.assert_array_equal(ck.state[key], stylegan2_layout.resample_filter())


def test_ada_clamp_pickle_holds_the_tiny_weights():
    tiny, clamp = read_stylegan2(ADA_TINY), read_stylegan2(ADA_CLAMP)
    chex.assert_trees_all_equal(clamp.state, tiny.state)


def test_ada_network_selects_g_or_g_ema(tmp_path):
    top = ada_writer.read_tree(ADA_TINY)
    assert top["G"] is top["G_ema"]  # the golden snapshot pickles one object under both names

    def plus_one(obj):  # a copy of the tree with every parameter + 1
        state = dict(obj.state)
        state["_parameters"] = {k: np.array(v + 1) for k, v in obj.state["_parameters"].items()}
        state["_modules"] = {k: plus_one(v) for k, v in obj.state["_modules"].items()}
        return dataclasses.replace(obj, state=state)

    top["G"] = plus_one(top["G_ema"])
    path = tmp_path / "snapshot.pkl"
    ada_writer.write_ada_pickle(path, top, protocol=3)

    g_ema, g = read_stylegan2(path), read_stylegan2(path, network="G")
    golden = read_stylegan2(ADA_TINY)
    parameters = [k for k in golden.state if "resample_filter" not in k and "noise_const" not in k]
    parameters.remove("mapping.w_avg")
    expected = {k: golden.state[k] for k in parameters}
    chex.assert_trees_all_equal({k: g_ema.state[k] for k in parameters}, expected)
    plus_one_expected = {k: v + 1 for k, v in expected.items()}
    chex.assert_trees_all_equal({k: g.state[k] for k in parameters}, plus_one_expected)
    assert g.source["network"] == "G" and g_ema.source["network"] == "G_ema"
    with pytest.raises(CheckpointError, match=r"has no network 'G' \(it holds \['G_ema'\]\)") as e:
        read_stylegan2(ADA_CLAMP, network="G")
    one_line(e, ADA_CLAMP)


def _clamp_tree():
    return ada_writer.read_tree(ADA_CLAMP)


def _module(top, *names):
    """The submodule of `top`'s G_ema at `names`, e.g. ("synthesis", "b16", "conv1")."""
    node = top["G_ema"]
    for name in names:
        node = node.state["_modules"][name]
    return node


def _refused(path, top, match: str) -> str:
    """Writes `top` as an ADA pickle at `path` and checks that reading it is refused in one
    line naming the file and matching `match`."""
    ada_writer.write_ada_pickle(path, top)
    with pytest.raises(CheckpointError, match=match) as e:
        read_stylegan2(path)
    return one_line(e, path)


def test_hostile_module_src_never_runs_but_would_under_nvidia_loader(tmp_path):
    marker = tmp_path / "module_src_ran"
    top = _clamp_tree()
    classes = sorted({m.class_name for _, m in ada_writer.walk(top["G_ema"])})
    source = f"open({str(marker)!r}, 'w').close()\n" + "".join(
        f"class {c}:\n    pass\n" for c in classes
    )

    def poison(obj):
        state = dict(obj.state)
        state["_modules"] = {k: poison(v) for k, v in obj.state["_modules"].items()}
        return dataclasses.replace(obj, module_src=source, state=state)

    path = tmp_path / "hostile.pkl"
    ada_writer.write_ada_pickle(path, {"G_ema": poison(top["G_ema"])})

    ck = read_stylegan2(path)
    assert not marker.exists()
    chex.assert_trees_all_equal(ck.state, read_stylegan2(ADA_CLAMP).state)

    # The same file under plain pickle.load, with stand-ins for NVIDIA's modules whose
    # `_reconstruct_persistent_obj` execs module_src as torch_utils/persistence.py does.
    program = Path(__file__).parent / "helpers" / "programs" / "unpickle_with_stand_ins.py"
    subprocess.run([sys.executable, program, path], check=True, timeout=120)
    assert marker.exists()


@pytest.mark.parametrize(
    "module,name",
    [("os", "system"), ("builtins", "eval"), ("posix", "system"), ("builtins", "exec")],
)
def test_hostile_global_in_ada_pickle_is_refused(tmp_path, module, name):
    marker = tmp_path / "pwned"
    top = _clamp_tree()
    argument = f"touch {marker}" if name == "system" else f"open({str(marker)!r}, 'w')"
    _module(top, "synthesis").state["evil"] = Call(Global(module, name), (argument,))
    path = tmp_path / "hostile_global.pkl"
    _refused(path, top, re.escape(f"refused global '{module}.{name}'"))
    assert detect_format(path) == "ada-pickle"
    assert not marker.exists()


def test_hostile_global_inside_a_tensor_payload_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    top = _clamp_tree()
    payload = Call(Global("os", "system"), (f"touch {marker}",))
    inner = tmp_path / "inner.pt"
    save_torch_legacy(payload, inner)
    storage = Call(Global("torch.storage", "_load_from_bytes"), (inner.read_bytes(),))
    top["G_ema"].state["_buffers"] = {
        "evil": Call(
            Global("torch._utils", "_rebuild_tensor_v2"), (storage, 0, (1,), (1,), False, {})
        )
    }
    _refused(tmp_path / "hostile_payload.pkl", top, "os.system")
    assert not marker.exists()


def test_class_conditional_ada_generator_is_refused(tmp_path):
    top = _clamp_tree()
    top["G_ema"].state["c_dim"] = 10
    _refused(tmp_path / "conditional.pkl", top, r"class-conditional \(c_dim = 10\)")


def test_stylegan3_network_is_refused_by_name(tmp_path):
    top = _clamp_tree()
    b4 = _module(top, "synthesis", "b4")
    _module(top, "synthesis").state["_modules"]["input"] = dataclasses.replace(
        b4, class_name="SynthesisInput"
    )
    path = tmp_path / "stylegan3.pkl"
    _refused(path, top, r"StyleGAN3 network \(training.networks_stylegan3: SynthesisInput\)")

    # A StyleGAN3 module's source names its filtered_lrelu op even where the class differs.
    top = _clamp_tree()
    top["G_ema"] = dataclasses.replace(
        top["G_ema"], module_src="from torch_utils.ops import filtered_lrelu\n"
    )
    _refused(path, top, "StyleGAN3 network")


def test_ada_architecture_other_than_skip_is_refused(tmp_path):
    top = _clamp_tree()
    _module(top, "synthesis", "b8").state["architecture"] = "resnet"
    _refused(tmp_path / "resnet.pkl", top, "architecture 'resnet'; only 'skip'")


def test_ada_missing_or_misshapen_tensor_is_refused(tmp_path):
    top = _clamp_tree()
    del _module(top, "synthesis", "b16", "conv1").state["_buffers"]["noise_const"]
    path = tmp_path / "missing.pkl"
    _refused(path, top, r"missing \['synthesis.b16.conv1.noise_const'\]")

    top = _clamp_tree()
    torgb = _module(top, "synthesis", "b32", "torgb")
    torgb.state["_parameters"]["bias"] = np.zeros(4, np.float32)
    _refused(path, top, r"synthesis.b32.torgb.bias has shape \(4,\), expected \(3,\)")


def test_ada_full_ffhq_layout_matches_the_key_table():
    """The real FFHQ 1024 state dict's keys and shapes are exactly what the layout expects."""
    table = key_table("stylegan2_ada_ffhq1024_keys.tsv")
    state = {k: np.zeros(s, np.float32) for k, s in table.items()}
    ck = stylegan2_layout.finish(
        "ffhq.pkl", "ada-pickle", state, conv_clamp=256, lr_multiplier=0.01, source={}
    )
    assert list(ck.state) == list(table)
    assert ck.config["img_resolution"] == 1024 and ck.config["num_ws"] == 18
    assert ck.config["mapping_layers"] == 8


# --- rosinality .pt ------------------------------------------------------------------------


def test_rosinality_golden_reads():
    ck = read_stylegan2(ROSINALITY_TINY)
    assert ck.format == "rosinality"
    assert ck.config == tiny_config(conv_clamp=None)
    shapes = tiny_shapes(dict.fromkeys(TINY_CHANNELS, 32))
    assert list(ck.state) == list(shapes)
    for key, value in ck.state.items():
        assert value.shape == shapes[key] and value.dtype == np.float32, key
    forward = np.load(GOLDEN / "sg2_rosinality_forward.npz")
    np.testing.assert_array_equal(ck.state["mapping.w_avg"], forward["latent_avg"].reshape(-1))
    raw = torch_format.load_state_dict(ROSINALITY_TINY, "g_ema")
    # The scale rosinality applies before demodulation is folded into the 3x3 weights...
    np.testing.assert_array_equal(
        ck.state["synthesis.b16.conv0.weight"],
        raw["convs.2.conv.weight"][0] * np.float32(1 / np.sqrt(32 * 9)),
    )
    # ...ToRGB keeps ADA's run-time gain; noise buffers feed the same layers.
    np.testing.assert_array_equal(
        ck.state["synthesis.b8.torgb.weight"], raw["to_rgbs.0.conv.weight"][0]
    )
    np.testing.assert_array_equal(
        ck.state["synthesis.b16.conv1.noise_const"], raw["noises.noise_4"][0, 0]
    )
    assert ck.state["synthesis.b4.conv1.noise_strength"] == raw["conv1.noise.weight"][0]


def test_rosinality_mean_latent_is_the_mapping_of_the_golden():
    ck = read_stylegan2(ROSINALITY_TINY)
    forward = np.load(GOLDEN / "sg2_rosinality_forward.npz")
    ours = mean_latent(ck.state, 2, forward["z"])
    np.testing.assert_allclose(ours, forward["w"].mean(0), atol=1e-5, rtol=0)  # float32 matmuls


@pytest.mark.parametrize("save", [save_torch_zip, save_torch_legacy])
def test_rosinality_training_checkpoint_extra_entries_are_skipped(tmp_path, save):
    sd = torch_format.load_state_dict(ROSINALITY_TINY, "g_ema")
    g = {k: v + 1 for k, v in sd.items()}
    checkpoint = {
        "g": g,
        "d": {"convs.0.0.weight": np.ones((4, 3, 1, 1), np.float32)},
        "g_ema": sd,
        "g_optim": {
            "state": {0: {"step": 3, "exp_avg": np.ones(4, np.float32)}},
            "param_groups": [{"lr": 0.002, "params": [0]}],
        },
        "d_optim": {"state": {}, "param_groups": []},
        "args": argparse.Namespace(size=64, channel_multiplier=2, latent=512, n_mlp=2, path="lmdb"),
        "ada_aug_p": 0.1,
    }
    path = tmp_path / "100000.pt"
    save(checkpoint, path)

    ck = read_stylegan2(path)
    g_ck = read_stylegan2(path, network="G")

    golden = read_stylegan2(ROSINALITY_TINY)
    for key in ("synthesis.b4.const", "mapping.fc1.bias", "synthesis.b64.torgb.bias"):
        np.testing.assert_array_equal(ck.state[key], golden.state[key])
        np.testing.assert_array_equal(g_ck.state[key], golden.state[key] + 1)
    assert ck.source["skipped"] == ["ada_aug_p", "args", "d", "d_optim", "g", "g_optim"]
    assert ck.source["args"] == {
        "size": 64,
        "channel_multiplier": 2,
        "latent": 512,
        "n_mlp": 2,
        "path": "lmdb",
    }
    # train.py saves no latent_avg: w_avg is rosinality's mean_latent of the mapping.
    assert "mean of the mapping" in ck.source["w_avg"]
    np.testing.assert_array_equal(ck.state["mapping.w_avg"], mean_latent(golden.state, 2))


def test_rosinality_hostile_entry_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    sd = torch_format.load_state_dict(ROSINALITY_TINY, "g_ema")
    path = tmp_path / "hostile.pt"
    save_torch_zip({"g_ema": sd, "args": Call(Global("os", "system"), (f"touch {marker}",))}, path)
    with pytest.raises(CheckpointError, match="'os.system'") as e:
        read_stylegan2(path)
    one_line(e, path)
    assert not marker.exists()


def test_rosinality_without_generator_is_refused(tmp_path):
    path = tmp_path / "mapping_only.pt"
    save_torch_zip({"style.1.weight": np.ones((4, 4), np.float32)}, path)
    with pytest.raises(
        CheckpointError, match=r"has no 'g_ema' generator \(entries: \['style.1.weight'\]\)"
    ) as e:
        read_stylegan2(path)
    one_line(e, path)


def test_rosinality_full_ffhq_layout_converts(tmp_path):
    """Every tensor of the real config-f layout lands where it should: each is filled with its
    own number, so the converted state shows which rosinality tensor each key came from."""
    table = key_table("stylegan2_rosinality_ffhq1024_keys.tsv")
    sd = {k: np.full(s, i + 1, np.float32) for i, (k, s) in enumerate(table.items())}
    for k in table:
        if k.endswith("kernel"):
            sd[k] = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 16  # rosinality: x4
    path = tmp_path / "stylegan2-ffhq-config-f.pt"
    save_torch_zip({"g_ema": sd, "latent_avg": np.full(512, -1, np.float32)}, path)

    ck = read_stylegan2(path)

    ada = key_table("stylegan2_ada_ffhq1024_keys.tsv")
    assert list(ck.state) == list(ada)
    assert {k: v.shape for k, v in ck.state.items()} == ada
    number = {k: i + 1 for i, k in enumerate(table)}

    def came_from(key):
        values = np.unique(ck.state[key])
        assert values.size == 1, key
        return values[0]

    assert came_from("mapping.fc7.weight") == number["style.8.weight"]
    assert came_from("mapping.w_avg") == -1
    assert came_from("synthesis.b4.const") == number["input.input"]
    assert came_from("synthesis.b4.conv1.bias") == number["conv1.activate.bias"]
    assert came_from("synthesis.b4.torgb.affine.bias") == number["to_rgb1.conv.modulation.bias"]
    assert came_from("synthesis.b1024.torgb.bias") == number["to_rgbs.7.bias"]
    assert came_from("synthesis.b512.conv0.noise_strength") == number["convs.12.noise.weight"]
    assert came_from("synthesis.b512.conv1.noise_const") == number["noises.noise_14"]
    assert (
        came_from("synthesis.b1024.conv1.affine.weight")
        == number["convs.15.conv.modulation.weight"]
    )
    folded = number["convs.14.conv.weight"] * np.float32(1 / np.sqrt(64 * 9))
    assert came_from("synthesis.b1024.conv0.weight") == folded
    np.testing.assert_array_equal(
        ck.state["synthesis.b256.resample_filter"], stylegan2_layout.resample_filter()
    )


# --- NVIDIA TF StyleGAN2 pickles -----------------------------------------------------------


def test_tf_pickle_converts_to_the_same_numbers_as_the_ada_route(tmp_path):
    ada = read_stylegan2(ADA_TINY)
    assert ada.state["synthesis.b4.conv1.affine.bias"].min() > 0  # mod_bias - 1 + 1 is exact here
    marker = tmp_path / "build_module_src_ran"
    path = tmp_path / "stylegan2-tiny-config-f.pkl"
    write_pickle(path, tf_pickle_from_ada(ada.state, marker=marker, g_offset=1.0))
    assert detect_format(path) == "tf-pickle"

    tf = read_stylegan2(path)

    assert tf.format == "tf-pickle" and not marker.exists()
    assert list(tf.state) == list(ada.state)
    worst = max(float(np.abs(tf.state[k] - ada.state[k]).max()) for k in ada.state)
    assert worst == 0.0  # max-abs 0: every tensor bitwise the ADA route's
    assert tf.config == ada.config | {"conv_clamp": None}  # config-f TF pickles state no clamp
    g = read_stylegan2(path, network="G")
    np.testing.assert_array_equal(
        g.state["synthesis.b8.conv0.weight"], ada.state["synthesis.b8.conv0.weight"] + 1
    )
    assert g.source["network"] == "G" and tf.source["network"] == "Gs"


def test_tf_conditional_and_v1_pickles_are_refused(tmp_path):
    ada = read_stylegan2(ADA_CLAMP)
    path = tmp_path / "conditional.pkl"
    write_pickle(path, tf_pickle_from_ada(ada.state, label_size=10))
    with pytest.raises(CheckpointError, match=r"class-conditional \(label_size = 10\)") as e:
        read_stylegan2(path)
    one_line(e, path)

    g, d, gs = tf_pickle_from_ada(ada.state)
    gs._state["version"] = 3
    write_pickle(path, (g, d, gs))
    with pytest.raises(CheckpointError, match=r"StyleGAN \(v1\) pickle, read by `convert nvidia`"):
        read_stylegan2(path)


# --- format detection ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "content,found",
    [
        (b"", "is empty"),
        (b"\x89PNG\r\n\x1a\n" + bytes(32), "is a PNG image"),
        (b"hello, this is text\n", r"starts with b'hello, t'"),
        (bytes(range(40)), r"starts with b'\\x00\\x01"),
        (b"\x93NUMPY\x01\x00", "numpy .npy array"),
        (pickle.dumps({"a": [1, 2]}, protocol=4), "is a pickle naming no globals"),
        (b"\x80\x04\x95\xff\xff\xff\xff\xff\xff\xff\x7f", "truncated or corrupt pickle"),
    ],
)
def test_other_files_get_one_line_naming_what_they_are(tmp_path, content, found):
    path = tmp_path / "file.bin"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=found) as e:
        read_stylegan2(path)
    one_line(e, path)


def test_pickle_of_other_globals_is_named_not_run(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "classic.pkl"
    path.write_bytes(b"\x80\x02" + f"cposix\nsystem\n(Vtouch {marker}\ntR.".encode())
    with pytest.raises(
        CheckpointError, match=r"is a pickle naming posix.system: not an NVIDIA"
    ) as e:
        read_stylegan2(path)
    one_line(e, path)
    assert not marker.exists()


def test_zip_archives_that_are_not_torch_checkpoints(tmp_path):
    npz = tmp_path / "weights.npz"
    np.savez(npz, kind=np.array("stylegan2"), w_avg=np.zeros(3))
    with pytest.raises(CheckpointError, match=r"numpy .npz archive \(kind, w_avg\)") as e:
        read_stylegan2(npz)
    one_line(e, npz)
    other = tmp_path / "other.zip"
    with zipfile.ZipFile(other, "w") as archive:
        archive.writestr("readme.txt", "hi")
    with pytest.raises(CheckpointError, match=r"zip archive of 1 files \(readme.txt\)"):
        read_stylegan2(other)


def test_legacy_and_zip_torch_files_are_rosinality(tmp_path):
    sd = torch_format.load_state_dict(ROSINALITY_TINY, "g_ema")
    latent_avg = np.load(GOLDEN / "sg2_rosinality_forward.npz")["latent_avg"]
    golden = read_stylegan2(ROSINALITY_TINY)
    for save in (save_torch_zip, save_torch_legacy):
        path = tmp_path / f"{save.__name__}.pt"
        save({"g_ema": sd, "latent_avg": latent_avg}, path)
        assert detect_format(path) == "rosinality"
        chex.assert_trees_all_equal(read_stylegan2(path).state, golden.state)


def test_unknown_network_name_is_refused():
    with pytest.raises(CheckpointError, match=r"network 'D': choose 'G_ema' or 'G'"):
        read_stylegan2(ADA_TINY, network="D")


def test_persistent_objects_are_immutable_data():
    top = ada_writer.read_tree(ADA_CLAMP)
    assert isinstance(top["G_ema"], PersistentObject)
    with pytest.raises(dataclasses.FrozenInstanceError):
        top["G_ema"].class_name = "Other"


def test_ada_malformed_attribute_gets_one_line(tmp_path):
    top = _clamp_tree()
    _module(top, "synthesis", "b8", "conv1").state["conv_clamp"] = [1.0, 2.0]
    _refused(tmp_path / "malformed.pkl", top, r"SynthesisLayer.conv_clamp is a list")
