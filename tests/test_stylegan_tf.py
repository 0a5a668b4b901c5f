"""Tests for pulse_jax/checkpoints/stylegan_tf.py (StyleGAN v1's TF pickle).

The fixtures are pickles with exactly the structure of NVIDIA's
`karras2019stylegan-ffhq-1024x1024.pkl` at small sizes, written by
tests/helpers/stylegan_tf_writer.py: reading one must give the drawn numbers back exactly.
"""

from __future__ import annotations

import copyreg
import hashlib
import os
import pickle
import pickletools
import re
import subprocess
from pathlib import Path

import chex
import numpy as np
import pytest
from helpers.stylegan_tf_writer import (
    DLATENT,
    NUMPY1,
    NUMPY2,
    EasyDict,
    globals_named,
    make_case,
    official_tuple,
    pulse_state_dicts,
    write_pickle,
)
from helpers.torch_writer import save_torch_legacy, save_torch_zip

from pulse_jax.checkpoints import CheckpointError, convert
from pulse_jax.checkpoints.loading import load_generator
from pulse_jax.checkpoints.stylegan_tf import read_nvidia_pickle
from pulse_jax.checkpoints.torch_format import load_state_dict

GOLDEN = Path(__file__).parent / "golden"
GOLDEN_ATOL = 1e-4  # float32 on CPU against the reference's float32 outputs


# --- reading the official structure -------------------------------------------------------


@pytest.mark.parametrize("numpy_module", [NUMPY1, NUMPY2])
@pytest.mark.parametrize("resolution", [32, 128])
def test_reads_back_the_pulse_numbers(tmp_path, resolution, numpy_module):
    path, data, syn, mapping, marker = make_case(tmp_path, resolution, numpy_module=numpy_module)
    # The fixture is what NVIDIA's pickler writes: protocol 4, framed, exactly these globals.
    assert data[:2] == b"\x80\x04"
    assert "FRAME" in {op.name for op, _, _ in pickletools.genops(data)}
    assert globals_named(data) == {
        "dnnlib.tflib.network.Network",
        "numpy.ndarray",
        "numpy.dtype",
        f"{numpy_module}._reconstruct",
        f"{numpy_module}.scalar",
    }

    syn_sd, map_sd, info = read_nvidia_pickle(path)

    assert list(syn_sd) == list(syn)  # PULSE's state_dict order, blur buffers included
    assert list(map_sd) == list(mapping)
    chex.assert_type([*syn_sd.values(), *map_sd.values()], np.float32)
    chex.assert_trees_all_equal((syn_sd, map_sd), (syn, mapping))  # Gs, not G
    assert not marker.exists()  # build_module_src never ran
    log2 = resolution.bit_length() - 1
    assert info["resolution"] == resolution
    assert info["num_layers"] == 2 * log2 - 2
    assert info["dlatent_size"] == DLATENT and info["mapping_layers"] == 8
    assert info["networks"] == ["G", "D", "Gs"]
    assert info["build_func_names"] == {
        "Gs": "G_style",
        "synthesis": "G_synthesis",
        "mapping": "G_mapping",
    }
    assert info["static_kwargs"]["synthesis"]["resolution"] == resolution
    assert info["channels"]["4"] == 16 and info["channels"][str(resolution)] == 256 // resolution
    assert "lod" in info["dropped"] and f"noise{2 * log2 - 3}" in info["dropped"]
    assert "ToRGB_lod1/weight" in info["dropped"]


def test_easydict_static_kwargs(tmp_path):
    """`dnnlib.util.EasyDict` (allowed, though the official file converts it to dict)."""
    rng = np.random.default_rng(5)
    syn, mapping = pulse_state_dicts(rng, 32, 128, 16)
    g, d, gs = official_tuple(syn, mapping, 32, rng)
    gs._state["static_kwargs"] = EasyDict(resolution=32, num_channels=3)
    path = tmp_path / "easydict.pkl"
    assert "dnnlib.util.EasyDict" in globals_named(write_pickle(path, (g, d, gs)))
    _, _, info = read_nvidia_pickle(path)
    assert info["static_kwargs"]["Gs"] == {"resolution": 32, "num_channels": 3}


def test_ffhq_1024_key_layout(tmp_path):
    """At 1024 px (tiny channels) the keys are the 100 + 16 of PULSE's FFHQ checkpoints."""
    path, _, syn, mapping, _ = make_case(tmp_path, 1024, fmap_base=2048, fmap_max=2)
    syn_sd, map_sd, info = read_nvidia_pickle(path)
    assert len(syn_sd) == 100 and len(map_sd) == 16
    assert sum(k.endswith("intermediate.kernel") for k in syn_sd) == 8
    assert list(syn_sd)[:3] == ["torgb.weight", "torgb.bias", "blocks.4x4.const"]
    assert syn_sd["blocks.1024x1024.conv0_up.weight"].shape == (2, 2, 3, 3)
    assert info["num_layers"] == 18
    assert list(syn_sd) == list(syn) and list(map_sd) == list(mapping)
    np.testing.assert_array_equal(syn_sd["blocks.4x4.const"], syn["blocks.4x4.const"])


def _synthesize(generator, rng, batch: int = 2):
    """Maps random z and synthesizes with random noise; returns (w, images [B, R, R, 3])."""
    z = rng.standard_normal((batch, DLATENT)).astype(np.float32)
    w = np.asarray(generator.map(z))
    dlatents = np.repeat(w[:, None], generator.num_layers, axis=1)  # [B, L, 512]
    noise = [
        rng.standard_normal((batch, r, r, 1)).astype(np.float32)
        for r in (2 ** (i // 2 + 2) for i in range(generator.num_layers))
    ]
    return w, np.asarray(generator.synthesize(dlatents, noise))


def test_cli_nvidia_and_pulse_checkpoints_give_the_same_generator(tmp_path):
    """`convert nvidia` on the pickle and `convert pulse` on the PULSE-format .pt files of
    the same numbers give generators that map and synthesize identically (128 px: the
    unfused up-convs at 8..64 px and the fused one at 128 px)."""
    path, _, syn, mapping, _ = make_case(tmp_path, 128)
    fit = {"mean": np.full(DLATENT, 0.1, np.float32), "std": np.full(DLATENT, 0.9, np.float32)}
    save_torch_zip(syn, tmp_path / "synthesis.pt")
    save_torch_zip(mapping, tmp_path / "mapping.pt")
    save_torch_legacy(fit, tmp_path / "gaussian_fit.pt")
    from_pickle, from_pulse = tmp_path / "from_pickle.npz", tmp_path / "from_pulse.npz"
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    fit_arg = ["--gaussian_fit", str(tmp_path / "gaussian_fit.pt")]
    nvidia = ["nvidia", "--pkl", str(path), "--sha256", sha256, "--out", str(from_pickle)]
    pulse = ["pulse", "--synthesis", str(tmp_path / "synthesis.pt")]
    pulse += ["--mapping", str(tmp_path / "mapping.pt"), "--out", str(from_pulse)]
    assert convert.main(nvidia + fit_arg) == 0
    assert convert.main(pulse + fit_arg) == 0
    wrong_checksum = nvidia[:4] + ["0" * 64, "--out", str(tmp_path / "refused.npz")]
    assert convert.main(wrong_checksum + fit_arg) == 1

    w_pickle, images_pickle = _synthesize(load_generator(from_pickle), np.random.default_rng(0))
    w_pulse, images_pulse = _synthesize(load_generator(from_pulse), np.random.default_rng(0))
    assert images_pickle.shape == (2, 128, 128, 3)
    assert np.isfinite(images_pulse).all() and images_pulse.std() > 0
    np.testing.assert_array_equal(w_pickle, w_pulse)
    np.testing.assert_array_equal(images_pickle, images_pulse)  # max-abs difference 0


def test_golden_weights_through_the_pickle_reproduce_pulse(tmp_path):
    """PULSE's own numbers (the golden tiny 128 px synthesis and the full mapping), put
    into an official-structure pickle, read back exactly; converted, the generator
    reproduces the reference implementation's outputs."""
    syn = load_state_dict(GOLDEN / "stylegan_tiny_synthesis.pt")
    mapping = load_state_dict(GOLDEN / "stylegan_mapping.pt")
    rng = np.random.default_rng(4)
    path = tmp_path / "golden.pkl"
    write_pickle(path, official_tuple(syn, mapping, 128, rng))
    syn_sd, map_sd, info = read_nvidia_pickle(path)
    assert list(syn_sd) == list(syn) and list(map_sd) == list(mapping)
    chex.assert_trees_all_equal((syn_sd, map_sd), (syn, mapping))
    assert info["channels"] == {"4": 64, "8": 64, "16": 64, "32": 32, "64": 16, "128": 8}

    forward = np.load(GOLDEN / "forward.npz")
    fit = {"mean": np.zeros(DLATENT, np.float32), "std": np.ones(DLATENT, np.float32)}
    out = tmp_path / "golden.npz"
    convert.write_stylegan_weights(out, syn_sd, map_sd, gaussian_fit=fit, provenance={})
    generator = load_generator(out)
    noise = [forward[f"noise_{i}"].transpose(0, 2, 3, 1) for i in range(12)]  # [B, r, r, 1]
    images = np.asarray(generator.synthesize(forward["dlatents"], noise))
    np.testing.assert_allclose(
        images, forward["images"].transpose(0, 2, 3, 1), rtol=0, atol=GOLDEN_ATOL
    )
    np.testing.assert_allclose(
        np.asarray(generator.map(forward["z"])), forward["w"], rtol=0, atol=GOLDEN_ATOL
    )


# --- refusing what is not the official file -----------------------------------------------


def test_g_alone_is_refused(tmp_path):
    path, _, syn, mapping, _ = make_case(tmp_path, 32)
    g, d, gs = official_tuple(syn, mapping, 32, np.random.default_rng(1))
    write_pickle(path, g)
    with pytest.raises(CheckpointError, match=r"single network 'G'.*'Gs' at index 2"):
        read_nvidia_pickle(path)
    write_pickle(path, (g, d))
    with pytest.raises(CheckpointError, match=r"tuple of 2 objects"):
        read_nvidia_pickle(path)
    write_pickle(path, (g, d, g))
    with pytest.raises(CheckpointError, match=r"holds 'G' at index 2.*expected 'Gs'"):
        read_nvidia_pickle(path)
    write_pickle(path, {"Gs": gs})
    with pytest.raises(CheckpointError, match=r"holds a dict"):
        read_nvidia_pickle(path)


@pytest.mark.parametrize("keep", [0, 1, 2, 100, 0.5, -1])
def test_truncated_or_empty_file(tmp_path, keep):
    path, data, *_ = make_case(tmp_path, 32)
    cut = int(len(data) * keep) if isinstance(keep, float) else keep % len(data)
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError) as error:
        read_nvidia_pickle(path)
    assert str(path) in str(error.value)


def test_not_a_pickle(tmp_path):
    path = tmp_path / "notes.pkl"
    path.write_text("these are not weights\n")
    with pytest.raises(CheckpointError, match="notes.pkl"):
        read_nvidia_pickle(path)
    path.write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(CheckpointError, match="zip archive"):
        read_nvidia_pickle(path)
    with pytest.raises(CheckpointError, match="cannot be read"):
        read_nvidia_pickle(tmp_path / "missing.pkl")


def _rewrite_synthesis(tmp_path, edit):
    rng = np.random.default_rng(2)
    syn, mapping = pulse_state_dicts(rng, 32, 128, 16)
    g, d, gs = official_tuple(syn, mapping, 32, rng)
    variables = gs._state["components"]["synthesis"]._state["variables"]
    gs._state["components"]["synthesis"]._state["variables"] = edit(variables)
    path = tmp_path / "edited.pkl"
    write_pickle(path, (g, d, gs))
    return path


def test_wrong_variables_are_named(tmp_path):
    def drop_conv1(vs):
        return [(n, v) for n, v in vs if n != "16x16/Conv1/weight"]

    with pytest.raises(CheckpointError, match=r"missing \['16x16/Conv1/weight'\]"):
        read_nvidia_pickle(_rewrite_synthesis(tmp_path, drop_conv1))

    def stylegan2_names(vs):
        return vs + [("8x8/Conv0_up/mod_weight", np.ones((512, 16), np.float32))]

    with pytest.raises(CheckpointError, match=r"unexpected \['8x8/Conv0_up/mod_weight'\]"):
        read_nvidia_pickle(_rewrite_synthesis(tmp_path, stylegan2_names))

    def bad_shape(vs):
        return [(n, v[:, :, :3] if n == "8x8/Conv1/weight" else v) for n, v in vs]

    with pytest.raises(CheckpointError, match=r"blocks\.8x8\.conv1\.weight .*expected"):
        read_nvidia_pickle(_rewrite_synthesis(tmp_path, bad_shape))

    def mid_growth(vs):
        return [(n, np.float32(1.5) if n == "lod" else v) for n, v in vs]

    with pytest.raises(CheckpointError, match=r"lod is \[1\.5\]"):
        read_nvidia_pickle(_rewrite_synthesis(tmp_path, mid_growth))

    def integer_weights(vs):
        return [(n, v.astype(np.int64) if n == "4x4/Conv/bias" else v) for n, v in vs]

    with pytest.raises(CheckpointError, match=r"4x4/Conv/bias .*float"):
        read_nvidia_pickle(_rewrite_synthesis(tmp_path, integer_weights))


# --- malicious files ----------------------------------------------------------------------


class Payload:
    """Unpickling this calls `func(*args)`, which would create a marker file."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def payloads(marker) -> dict[str, tuple[Payload, str]]:
    code = f"open({str(marker)!r}, 'w').close()"
    return {
        "os.system": (Payload(os.system, f"touch '{marker}'"), f"{os.system.__module__}.system"),
        "eval": (Payload(eval, code), "builtins.eval"),
        "exec": (Payload(exec, code), "builtins.exec"),
        "popen": (Payload(subprocess.Popen, ["touch", str(marker)]), "subprocess.Popen"),
    }


@pytest.mark.parametrize("kind", ["os.system", "eval", "exec", "popen"])
def test_payloads_are_live(tmp_path, kind):
    """Control: under a plain unpickler each payload does create its marker."""
    marker = tmp_path / "control"
    payload, _ = payloads(marker)[kind]
    result = pickle.loads(pickle.dumps(payload, protocol=4))
    if isinstance(result, subprocess.Popen):
        result.wait()
    assert marker.exists()


@pytest.mark.parametrize("kind", ["os.system", "eval", "exec", "popen"])
@pytest.mark.parametrize("place", ["variables", "static_kwargs", "components", "top"])
def test_payload_in_official_structure_is_refused(tmp_path, kind, place):
    marker = tmp_path / "pwned"
    payload, global_name = payloads(marker)[kind]
    rng = np.random.default_rng(3)
    syn, mapping = pulse_state_dicts(rng, 32, 128, 16)
    g, d, gs = official_tuple(syn, mapping, 32, rng)
    synthesis = gs._state["components"]["synthesis"]._state
    if place == "variables":
        synthesis["variables"].insert(5, ("4x4/Const/evil", payload))
    elif place == "static_kwargs":
        synthesis["static_kwargs"]["resolution"] = payload
    elif place == "components":
        gs._state["components"]["extra"] = payload
    top = (g, d, gs, payload) if place == "top" else (g, d, gs)
    path = tmp_path / "evil.pkl"
    data = write_pickle(path, top)
    assert global_name in globals_named(data)

    with pytest.raises(CheckpointError, match=re.escape(f"refused global '{global_name}'")) as e:
        read_nvidia_pickle(path)
    assert str(path) in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    "module,name",
    [
        ("os", "system"),
        ("posix", "system"),
        ("builtins", "getattr"),
        ("builtins", "__import__"),
        ("numpy", "load"),
        ("numpy", "frombuffer"),
        ("numpy", "ndarray.tofile"),
        ("numpy.core.multiarray", "_reconstruct.__globals__"),
        ("numpy.testing", "runstring"),
        ("dnnlib.tflib.network", "exec"),
        ("dnnlib.tflib.network", "Network.__init__"),
        ("copyreg", "_reconstructor"),
        ("functools", "partial"),
    ],
)
def test_any_other_global_is_refused(tmp_path, module, name):
    marker = tmp_path / "pwned"
    # Protocol 0, the classic payload shape: GLOBAL, then call it with a string.
    path = tmp_path / "classic.pkl"
    path.write_bytes(f"c{module}\n{name}\n(Vtouch {marker}\ntR.".encode())
    with pytest.raises(CheckpointError, match=re.escape(f"refused global '{module}.{name}'")):
        read_nvidia_pickle(path)
    assert not marker.exists()


def test_extension_registry_cannot_smuggle_a_global(tmp_path):
    """EXT opcodes resolve through copyreg's process-wide cache, which can skip
    `find_class` entirely; the reader refuses them outright."""
    marker = tmp_path / "pwned"
    code = 0x7E
    copyreg.add_extension("os", "system", code)
    try:
        assert pickle.loads(bytes([0x80, 2, 0x82, code, ord(".")])) is os.system  # now cached
        path = tmp_path / "ext.pkl"
        command = f"touch {marker}".encode()
        path.write_bytes(
            bytes([0x80, 2, 0x82, code, 0x58])
            + len(command).to_bytes(4, "little")
            + command
            + b"\x85R."
        )
        with pytest.raises(CheckpointError, match="opcode EXT1"):
            read_nvidia_pickle(path)
    finally:
        copyreg.remove_extension("os", "system", code)
    assert not marker.exists()
