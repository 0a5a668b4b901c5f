"""Tests for pulse_jax.checkpoints.torch_format: torch checkpoints read without torch, safely."""

import collections
import io
import pickle
import shlex
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
from helpers.torch_writer import Call, Global, TensorView, save_torch_legacy, save_torch_zip

from pulse_jax.checkpoints import CheckpointError
from pulse_jax.checkpoints.torch_format import load_state_dict, load_torch_checkpoint

GOLDEN = Path(__file__).parent / "golden"
WRITERS = {"zip": save_torch_zip, "legacy": save_torch_legacy}


def _assert_same(got, expected):
    """Equal values, dtypes and shapes, recursively; containers keep their kind."""
    if isinstance(expected, np.ndarray):
        assert isinstance(got, np.ndarray)
        assert got.dtype == expected.dtype and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and list(got) == list(expected)
        for key in expected:
            _assert_same(got[key], expected[key])
    elif isinstance(expected, list | tuple):
        assert type(got) is type(expected) and len(got) == len(expected)
        for a, b in zip(got, expected, strict=True):
            _assert_same(a, b)
    else:
        assert type(got) is type(expected) and got == expected


def _rewrite_zip(path, change):
    """Rewrites a zip archive with `change(name, data)` -> new data, or None to drop the record."""
    with zipfile.ZipFile(path) as archive:
        records = [(name, archive.read(name)) for name in archive.namelist()]
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in records:
            if (data := change(name, data)) is not None:
                archive.writestr(name, data)


def _assert_checkpoint_error(path, match=None):
    with pytest.raises(CheckpointError, match=match) as info:
        load_torch_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "\n" not in message
    return message


# --- the golden checkpoints written by torch ---


def test_gaussian_fit_legacy_cuda_tagged_matches_npz():
    fit = load_torch_checkpoint(GOLDEN / "gaussian_fit.pt")
    expected = np.load(GOLDEN / "gaussian_fit.npz")
    assert sorted(fit) == ["mean", "std"]
    for name in ("mean", "std"):
        assert fit[name].dtype == np.float32 and fit[name].shape == (512,)
        np.testing.assert_array_equal(fit[name], expected[name])


def test_tiny_synthesis_legacy_and_zip_are_identical():
    legacy = load_state_dict(GOLDEN / "stylegan_tiny_synthesis.pt")
    zipped = load_state_dict(GOLDEN / "stylegan_tiny_synthesis_zip.pt")
    assert list(legacy) == list(zipped)
    assert legacy["blocks.4x4.const"].shape == (1, 64, 4, 4)
    assert legacy["torgb.weight"].shape == (3, 8, 1, 1)
    for name in legacy:
        assert legacy[name].dtype == np.float32
        _assert_same(zipped[name], legacy[name])


def test_mapping_has_eight_dense_layers():
    mapping = load_state_dict(GOLDEN / "stylegan_mapping.pt")
    assert sorted(mapping) == sorted(f"dense{i}.{p}" for i in range(8) for p in ("weight", "bias"))
    for i in range(8):
        assert mapping[f"dense{i}.weight"].shape == (512, 512)
        assert mapping[f"dense{i}.bias"].shape == (512,)
        assert np.isfinite(mapping[f"dense{i}.weight"]).all()


# --- round trips through tests/helpers/torch_writer.py ---


def _every_dtype():
    rng = np.random.default_rng(0)
    return {
        "float32": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "float64": rng.standard_normal(5),
        "float16": rng.standard_normal((3,)).astype(np.float16),
        "complex64": (rng.standard_normal(2) + 1j * rng.standard_normal(2)).astype(np.complex64),
        "int64": np.array([-(2**40), 0, 2**40], np.int64),
        "int32": np.array([-7, 7], np.int32),
        "int16": np.array([-3, 3], np.int16),
        "int8": np.array([-128, 127], np.int8),
        "uint8": np.array([0, 255], np.uint8),
        "uint16": np.array([0, 65535], np.uint16),
        "bool": np.array([True, False, True]),
        "scalar_int64": np.array(12, np.int64),
        "empty": np.zeros((0, 3), np.float32),
        "fortran_order": np.asfortranarray(rng.standard_normal((3, 2)).astype(np.float32)),
    }


@pytest.mark.parametrize("fmt", WRITERS)
def test_round_trip_of_every_dtype(tmp_path, fmt):
    arrays = _every_dtype()
    path = tmp_path / "checkpoint.pt"
    WRITERS[fmt](arrays, path)
    _assert_same(load_state_dict(path), arrays)


@pytest.mark.parametrize("fmt", WRITERS)
def test_round_trip_of_nested_structure(tmp_path, fmt):
    weight = np.arange(6, dtype=np.float32).reshape(2, 3)
    checkpoint = {
        "state": collections.OrderedDict(weight=weight, steps=np.array(3)),
        "epoch": 7,
        "lr": 0.25,
        "name": "dcgan",
        "flags": [True, None, (1, 2.5, "x")],
        "groups": [{"params": [0, 1], "betas": (0.9, 0.999)}],
    }
    path = tmp_path / "checkpoint.pt"
    WRITERS[fmt](checkpoint, path)
    got = load_torch_checkpoint(path)
    _assert_same(got, checkpoint)
    assert isinstance(got["state"], collections.OrderedDict)


@pytest.mark.parametrize("fmt", WRITERS)
def test_strided_views_of_a_shared_storage(tmp_path, fmt):
    storage = np.arange(24, dtype=np.float32)
    views = {
        "transposed": TensorView(storage, 0, (6, 4), (1, 6)),
        "window": TensorView(storage, 5, (2, 3), (6, 2)),
        "row": TensorView(storage, 3, (1, 3), (0, 1)),  # a zero stride on a size-1 axis
        "scalar": TensorView(storage, 23, (), ()),
    }
    path = tmp_path / "views.pt"
    WRITERS[fmt](views, path)
    got = load_state_dict(path)
    table = storage.reshape(4, 6)
    _assert_same(got["transposed"], table.T.copy())
    _assert_same(got["window"], storage[5:17:2].reshape(2, 3))
    _assert_same(got["row"], storage[3:6].reshape(1, 3))
    _assert_same(got["scalar"], np.array(23, np.float32))
    assert all(a.flags.c_contiguous and a.flags.writeable for a in got.values())
    # A zero stride on a longer axis repeats data the file does not hold: refused.
    WRITERS[fmt]({"broadcast": TensorView(storage, 3, (2, 3), (0, 1))}, path)
    _assert_checkpoint_error(path, match="zero stride")


@pytest.mark.parametrize("fmt", WRITERS)
def test_bfloat16_is_widened_to_float32(tmp_path, fmt):
    values = np.array([1.0, -2.0, 0.15625, -np.inf, 2.0**127 * 1.5], np.float32)
    bits = (values.view(np.uint32) >> 16).astype(np.uint16)  # all exact in bfloat16
    path = tmp_path / "bf16.pt"
    WRITERS[fmt]({"w": TensorView(bits, 0, (5,), (1,), torch_dtype="bfloat16")}, path)
    _assert_same(load_state_dict(path)["w"], values)


@pytest.mark.parametrize("fmt", WRITERS)
def test_parameters_sizes_and_devices(tmp_path, fmt):
    weight = np.ones((2, 2), np.float32)
    checkpoint = {
        "param": Call(
            Global("torch._utils", "_rebuild_parameter"),
            (weight, True, collections.OrderedDict()),
        ),
        "size": Call(Global("torch", "Size"), ((3, 4),)),
        "device": Call(Global("torch", "device"), ("cuda", 0)),
    }
    path = tmp_path / "misc.pt"
    WRITERS[fmt](checkpoint, path, location="cuda:0")
    got = load_torch_checkpoint(path)
    _assert_same(got, {"param": weight, "size": (3, 4), "device": "cuda:0"})


def test_zip_folder_name_and_big_endian_storages(tmp_path):
    weight = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    path = tmp_path / "weights.tar"  # named like the DCGAN checkpoint; top folder 'weights'
    save_torch_zip({"netG_state_dict": {"w": weight}}, path)

    def to_big_endian(name, data):
        if name.endswith("/byteorder"):
            return b"big"
        if "/data/" in name:
            return np.frombuffer(data, "<f4").astype(">f4").tobytes()
        return data

    _rewrite_zip(path, to_big_endian)
    _assert_same(load_state_dict(path, key="netG_state_dict"), {"w": weight})


def test_dcgan_like_checkpoint_by_key(tmp_path):
    generator = {
        "main.0.weight": np.zeros((100, 512, 4, 4), np.float32),
        "main.1.running_var": np.ones(512, np.float32),
        "main.1.num_batches_tracked": np.array(1000, np.int64),
    }
    optimizer = {
        "state": {0: {"step": np.array(3.0, np.float32), "exp_avg": np.zeros(4, np.float32)}},
        "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "params": [0], "foreach": None}],
    }
    path = tmp_path / "weights.tar"
    checkpoint = {"netG_state_dict": generator, "optimizerG_state_dict": optimizer, "epoch": 9}
    save_torch_zip(checkpoint, path, location="cuda:0")
    state = load_state_dict(path, key="netG_state_dict")
    _assert_same(state, generator)
    assert type(state) is dict
    _assert_same(load_torch_checkpoint(path)["optimizerG_state_dict"], optimizer)


def test_load_state_dict_refuses_missing_keys_and_nesting(tmp_path):
    path = tmp_path / "checkpoint.pt"
    save_torch_zip({"netG_state_dict": {"w": np.ones(2, np.float32)}, "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="no entry 'netD_state_dict'"):
        load_state_dict(path, key="netD_state_dict")
    with pytest.raises(
        CheckpointError, match="not a flat state dict: entry 'netG_state_dict' is a dict"
    ):
        load_state_dict(path)
    save_torch_legacy([np.ones(2, np.float32)], path)
    with pytest.raises(CheckpointError, match="holds a list"):
        load_state_dict(path, key="netG_state_dict")


# --- malicious pickles ---


def _payloads(marker: Path):
    """(module, name, args): globals a malicious checkpoint could call to create `marker`."""
    python = f"open({str(marker)!r}, 'w').close()"
    return [
        ("os", "system", (f"touch {shlex.quote(str(marker))}",)),
        ("posix", "system", (f"touch {shlex.quote(str(marker))}",)),
        ("builtins", "eval", (python,)),
        ("builtins", "exec", (python,)),
        ("subprocess", "Popen", (["touch", str(marker)],)),
        ("builtins", "getattr", ("x", "upper")),
        ("builtins", "__import__", ("os",)),
        ("torch.serialization", "load", (str(marker),)),  # a torch global, but not on the list
        ("collections", "OrderedDict.fromkeys", (["a"],)),  # dotted names do not reach past it
    ]


PAYLOAD_NAMES = [f"{m}.{n}" for m, n, _ in _payloads(Path("marker"))]


def _write_malicious(where, path, payload):
    tensors = {"weight": np.ones((2, 2), np.float32)}
    if where == "zip data.pkl":
        save_torch_zip({**tensors, "evil": payload}, path)
    elif where == "legacy object pickle":
        save_torch_legacy({**tensors, "evil": payload}, path)
    else:
        save_torch_legacy(tensors, path, sys_info=payload)


@pytest.mark.parametrize("where", ["zip data.pkl", "legacy object pickle", "legacy sys_info"])
@pytest.mark.parametrize("index", range(len(PAYLOAD_NAMES)), ids=PAYLOAD_NAMES)
def test_malicious_global_is_refused_and_never_runs(tmp_path, where, index):
    marker = tmp_path / "pwned"
    module, name, args = _payloads(marker)[index]
    path = tmp_path / "evil.pt"
    _write_malicious(where, path, Call(Global(module, name), args))
    message = _assert_checkpoint_error(path, match="refuses to unpickle global")
    assert f"'{module}.{name}'" in message
    assert not marker.exists()


@pytest.mark.parametrize("index", [0, 2], ids=["os.system", "builtins.eval"])
def test_the_refused_payloads_would_run_under_plain_pickle(tmp_path, index):
    marker = tmp_path / "pwned"
    module, name, args = _payloads(marker)[index]
    zip_path, legacy_path = tmp_path / "evil.pt", tmp_path / "evil_legacy.pt"
    save_torch_zip(Call(Global(module, name), args), zip_path)
    save_torch_legacy({}, legacy_path, sys_info=Call(Global(module, name), args))
    _assert_checkpoint_error(zip_path, match="refuses to unpickle global")
    _assert_checkpoint_error(legacy_path, match="refuses to unpickle global")
    assert not marker.exists()

    with zipfile.ZipFile(zip_path) as archive:
        pickle.loads(archive.read("evil/data.pkl"))
    assert marker.exists()
    marker.unlink()
    with open(legacy_path, "rb") as f:
        for _ in range(3):  # magic number, protocol version, sys_info: the payload runs here
            pickle.load(f)
    assert marker.exists()


# --- files that are not (whole) checkpoints ---


def test_missing_and_empty_files(tmp_path):
    _assert_checkpoint_error(tmp_path / "absent.pt", match="cannot be read")
    (tmp_path / "empty.pt").write_bytes(b"")
    _assert_checkpoint_error(tmp_path / "empty.pt", match="is empty")


@pytest.mark.parametrize("seed", range(8))
def test_random_bytes(tmp_path, seed):
    path = tmp_path / "random.pt"
    path.write_bytes(np.random.default_rng(seed).bytes(1000))
    _assert_checkpoint_error(path)


@pytest.mark.parametrize(
    "content",
    [b"hello, this is a text file\n", b"PK\x03\x04 not really a zip", pickle.dumps({"a": 1})],
    ids=["text", "zip_magic_only", "plain_pickle"],
)
def test_non_checkpoint_files(tmp_path, content):
    path = tmp_path / "not_a_checkpoint.pt"
    path.write_bytes(content)
    _assert_checkpoint_error(path)


def test_zip_without_data_pkl(tmp_path):
    path = tmp_path / "other.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("other/readme.txt", "hello")
    _assert_checkpoint_error(path, match="without <name>/data.pkl")


@pytest.mark.parametrize("name", ["stylegan_tiny_synthesis.pt", "stylegan_tiny_synthesis_zip.pt"])
@pytest.mark.parametrize("fraction", [0.0001, 0.01, 0.3, 0.6, 0.9, 0.999])
def test_truncated_checkpoints(tmp_path, name, fraction):
    data = (GOLDEN / name).read_bytes()
    path = tmp_path / name
    path.write_bytes(data[: max(1, int(len(data) * fraction))])
    _assert_checkpoint_error(path)


def test_truncated_by_one_byte(tmp_path):
    for name in ("stylegan_tiny_synthesis.pt", "stylegan_tiny_synthesis_zip.pt"):
        path = tmp_path / name
        path.write_bytes((GOLDEN / name).read_bytes()[:-1])
        _assert_checkpoint_error(path)


def test_zip_storage_shorter_than_declared(tmp_path):
    path = tmp_path / "short.pt"
    save_torch_zip({"w": np.ones(8, np.float32)}, path)
    _rewrite_zip(path, lambda name, data: data[:-4] if name.endswith("/data/0") else data)
    _assert_checkpoint_error(path, match="fewer than the 32 declared")


def test_zip_storage_record_missing(tmp_path):
    path = tmp_path / "missing.pt"
    save_torch_zip({"w": np.ones(8, np.float32)}, path)
    _rewrite_zip(path, lambda name, data: None if name.endswith("/data/0") else data)
    _assert_checkpoint_error(path, match="no record missing/data/0")


def test_legacy_storage_shorter_than_declared(tmp_path):
    path = tmp_path / "short.pt"
    save_torch_legacy({"w": np.ones(8, np.float32)}, path)
    data = bytearray(path.read_bytes())
    count_at = len(data) - 8 - 32  # the only storage: 8-byte count, then 8 float32
    assert struct.unpack_from("<q", data, count_at) == (8,)
    struct.pack_into("<q", data, count_at, 6)
    path.write_bytes(bytes(data))
    _assert_checkpoint_error(path, match="fewer than 8")


def test_legacy_wrong_protocol_version(tmp_path):
    path = tmp_path / "old.pt"
    buffer = io.BytesIO()
    for record in (0x1950A86A20F9469CFC6C, 1000):
        pickle.dump(record, buffer, protocol=2)
    path.write_bytes(buffer.getvalue())
    _assert_checkpoint_error(path, match="protocol version 1000")


@pytest.mark.parametrize("fmt", WRITERS)
def test_view_past_its_storage_is_refused(tmp_path, fmt):
    path = tmp_path / "overrun.pt"
    storage = np.ones(4, np.float32)
    WRITERS[fmt]({"w": TensorView(storage, 2, (1000,), (1,))}, path)
    _assert_checkpoint_error(path, match="runs past the end of its storage")
