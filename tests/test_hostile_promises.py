"""The readers' promises under attack (issue 21): every hostile file below is refused in one
line by a check (no traceback, no control character, never an "unchecked" error), within
seconds, its peak memory within the read's budget above the process's own baseline,
nothing written, nothing large left alive, and the good files read next in the same
process read exactly. All cases run in one child process under a 3 GB address-space limit.

The classes (the issue's numbering): 1 time (hash floods), 2 memory beyond arrays, 3
numbers from the file sizing work, 4 Python errors that escaped as tracebacks, 5 control
characters, 6 ambiguous names, 7 special files, 8 output naming (in process), 9 container
images, 10 release on failure.
"""

# ruff: noqa: B018  (the pickle assembler's opcodes are properties: `a.mark.tuple`)

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from helpers import ada_writer
from helpers.hostile import PROGRAMS, ROOT, Asm, ada, png_with_size, tf
from helpers.stylegan_tf_writer import tf_pickle_from_ada, write_pickle
from helpers.torch_writer import save_torch_legacy, save_torch_zip, write_zip

from pulse_jax.checkpoints import (
    CheckpointError,
    convert,
    refusing,
    shown,
    stylegan2_ada,
    weights_file,
)
from pulse_jax.checkpoints.stylegan2_formats import read_stylegan2
from pulse_jax.images import output_names

GOLDEN = Path(__file__).parent / "golden"
MEMORY_LIMIT = 3 << 30  # RLIMIT_AS of the child: 3 GB
TIME_LIMIT = 300.0  # the whole child; each case must take seconds (CASE_SECONDS)
CASE_SECONDS = 10.0
# The memory a read may take above the process's baseline: the read's budget
# (`Limits.expansion` x the file + `Limits.slack`), the file's own bytes held while read
# and a copy of them, and a fixed allowance for the interpreter's and numpy's transients.
EXPANSION, SLACK, FIXED = 8, 16 << 20, 48 << 20
CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
P = 2**61 - 1  # k * P hashes to 0 in CPython for every integer k
FLOOD = 160_000


# --- building the files -----------------------------------------------------------------


def colliding(a: Asm, n: int = FLOOD, value=None) -> Asm:
    """Pushes n integers that all hash alike (each followed by a value when given)."""
    for k in range(1, n + 1):
        a.int(k * P)
        if value is not None:
            value(a)
    return a


def appends(a: Asm) -> Asm:
    return a.op(b"e")


def ada_tree() -> dict:
    """The small valid ADA tree (8 px, from the golden pickle)."""
    return ada_writer.small_tree(GOLDEN / "stylegan2" / "sg2ada_clamp.pkl")


def module(state=None, class_name="Module") -> stylegan2_ada.PersistentObject:
    return stylegan2_ada.PersistentObject(class_name, 4, "# source\n", state or {})


def write_ada(path: Path, edit) -> Path:
    top = ada_tree()
    edit(top["G_ema"])
    ada_writer.write_ada_pickle(path, top)
    return path


def tf_tuple():
    state = read_stylegan2(GOLDEN / "stylegan2" / "sg2ada_tiny.pkl").state
    return tf_pickle_from_ada(state)


def write_tf(path: Path, edit) -> Path:
    g, d, gs = tf_tuple()
    edit(gs._state)
    write_pickle(path, (g, d, gs))
    return path


def write_rosinality(path: Path, edit, latent_avg=True) -> Path:
    sd = ada_writer.tiny_rosinality_state()
    checkpoint = {"g_ema": sd}
    if latent_avg:
        checkpoint["latent_avg"] = np.ones(8, np.float32)
    edit(checkpoint)
    save_torch_zip(checkpoint, path)
    return path


def pulse_mapping(path: Path, widths) -> Path:
    """A PULSE mapping.pt whose dense layers have these (out, in) shapes (torch layout)."""
    sd = {}
    for i, (out, inp) in enumerate(widths):
        sd[f"dense{i}.weight"] = np.full((out, inp), 0.01, np.float32)
        sd[f"dense{i}.bias"] = np.zeros(out, np.float32)
    save_torch_legacy(sd, path)
    return path


def ico(path: Path, inner: bytes, kind: int = 1) -> Path:
    """An icon (ICO, or CUR with kind 2) whose directory says 16 x 16 around `inner`."""
    head = bytes([0, 0, kind, 0, 1, 0])
    entry = bytes([16, 16, 0, 0, 1, 0, 32, 0]) + len(inner).to_bytes(4, "little")
    entry += (6 + 16).to_bytes(4, "little")
    path.write_bytes(head + entry + inner)
    return path


def icns(path: Path, inner: bytes) -> Path:
    block = b"ic10" + (8 + len(inner)).to_bytes(4, "big") + inner
    path.write_bytes(b"icns" + (8 + len(block)).to_bytes(4, "big") + block)
    return path


def weights_with_config(path: Path, good: Path, **config) -> Path:
    """A copy of the weights file `good` whose __meta__ config has these entries."""
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w") as target:
        for name in source.namelist():
            data = source.read(name)
            if name == "__meta__.npy":
                meta = json.loads(np.load(io.BytesIO(data)).tobytes())
                meta["config"].update(config)
                buffer = io.BytesIO()
                np.save(buffer, np.frombuffer(json.dumps(meta).encode(), np.uint8))
                data = buffer.getvalue()
            target.writestr(name, data)
    return path


# --- the cases ----------------------------------------------------------------------------


def _time_cases(d: Path) -> list:
    """Class 1: one opcode filling one container with keys that all hash alike."""
    sets = ada(Asm(4)).glob("builtins", "set").mark.empty_list.mark
    additems = ada(Asm(4)).op(b"\x8f").mark
    return [
        ("torch", write_zip(d / "flood.pt", _dict_flood(Asm()), {})),
        ("stylegan2", _write(d / "set_reduce.pkl", appends(colliding(sets)).tuple.reduce.stop())),
        ("stylegan2", _write(d / "additems.pkl", colliding(additems).op(b"\x90").stop())),
        ("stylegan2", _write(d / "frozenset.pkl", colliding(ada(Asm(4)).mark).op(b"\x91").stop())),
        ("stylegan2", _write(d / "tf_dict.pkl", _dict_flood(tf(Asm(4))))),
        ("nvidia", _write(d / "v1_dict.pkl", _dict_flood(Asm()))),
        ("torch", write_zip(d / "memo_put.pt", _memo_put(), {})),
    ]


def _dict_flood(a: Asm) -> bytes:
    """A dict filled by one SETITEMS with FLOOD keys that hash alike."""
    return colliding(a.empty_dict.mark, value=lambda a: a.none).setitems.stop()


def _memo_put() -> bytes:
    a = Asm()
    for k in range(1, 1000):
        a.none.op(b"p" + str(k * P).encode() + b"\n")
    return a.stop()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _memory_cases(d: Path) -> list:
    """Class 2: objects beyond arrays, the detection scan, long names, the mean latent."""
    scan = Asm(4)
    for _ in range(1_000_000):
        scan.op(b"\x8c\x01x\x94")  # SHORT_BINUNICODE 'x', MEMOIZE
    scan.glob("torch_utils.persistence", "_reconstruct_persistent_obj")
    shared = module({"_modules": {f"c{i}": module() for i in range(2)}})
    return [
        ("torch", write_zip(d / "dicts.pt", Asm().op(b"}" * 2_000_000).stop(), {})),
        ("stylegan2", _write(d / "sets.pkl", ada(Asm(4)).op(b"\x8f" * 2_000_000).stop())),
        ("torch", write_zip(d / "list.pt", Asm().empty_list.op(b"Na" * 1_000_000).stop(), {})),
        ("stylegan2", _write(d / "scan_memo.pkl", scan.stop())),
        ("stylegan2", write_ada(d / "long_name.pkl", lambda g: g.state["_modules"].update(
            {"n" * 1_000_000: module({"_modules": {f"c{i}": shared for i in range(5000)}})}))),
        ("stylegan2", write_ada(d / "many_modules.pkl", lambda g: g.state["_modules"].update(
            {"m": module({"_modules": {f"c{i}": shared for i in range(5000)}})}))),
        ("stylegan2", write_tf(d / "tf_long_name.pkl", lambda gs: gs["variables"].append(
            ("v" * 1_000_000, np.zeros(1, np.float32))))),
        ("stylegan2", write_rosinality(d / "rosi_wide.pt", lambda c: c["g_ema"].update(
            {"style.1.weight": np.zeros((0, 10**9), np.float32)}), latent_avg=False)),
        ("stylegan2", write_rosinality(d / "rosi_z5000.pt", lambda c: c["g_ema"].update(
            {"style.1.weight": np.zeros((8, 5000), np.float32)}), latent_avg=False)),
        ("stylegan2", write_rosinality(d / "rosi_deep.pt", _deep_rosinality, latent_avg=False)),
    ]  # fmt: skip


def _deep_rosinality(checkpoint) -> None:
    sd = checkpoint["g_ema"]
    for i in range(1, 2001):
        sd[f"style.{i}.weight"] = np.full((8, 8), 0.01, np.float32)
        sd[f"style.{i}.bias"] = np.zeros(8, np.float32)


def _synthesis() -> str:
    return str(GOLDEN / "stylegan_tiny_synthesis.pt")


def _pulse(d: Path, name: str, *files: str) -> tuple:
    out = d / f"{name}.npz"
    argv = ["pulse", "--synthesis", _synthesis(), *files, "--out", str(out)]
    return ("convert", argv, out)


def _number_cases(d: Path) -> list:
    """Class 3: widths of 0 and 10^9, 2000 layers, each refused before any fit."""
    cases = []
    for name, widths in {
        "latent_0": [(512, 0), (512, 512)],
        "latent_1e9": [(0, 10**9), (512, 0)],
        "depth_2000": [(8, 8)] * 1999 + [(512, 8)],
    }.items():
        path = pulse_mapping(d / f"{name}.pt", widths)
        cases.append(_pulse(d, name, "--mapping", str(path)))
    rosi = write_rosinality(d / "rosi_w0.pt", lambda c: c["g_ema"].update(
        {"style.1.weight": np.zeros((0, 8), np.float32)}))  # fmt: skip
    out = d / "rosi_w0.npz"
    cases.append(("convert", ["stylegan2", "--checkpoint", str(rosi), "--out", str(out)], out))
    return cases


def _traceback_cases(d: Path, good_weights: Path) -> list:
    """Class 4: what used to escape as ZeroDivisionError, OverflowError, ValueError, ..."""
    fit = ["--gaussian_fit", str(GOLDEN / "gaussian_fit.pt")]
    abc = _pulse_synthesis_with(d / "abc_block.pt", "blocks.abcx4.conv.weight")
    out = d / "abc.npz"
    mapping = pulse_mapping(d / "no_chain.pt", [(512, 512), (512, 300)])
    return [
        ("generator", weights_with_config(d / "big_clamp.npz", good_weights, conv_clamp=10**400)),
        ("generator", weights_with_config(d / "clamp_str.npz", good_weights, conv_clamp="x")),
        ("convert", ["pulse", "--synthesis", str(abc), *fit, "--out", str(out)], out),
        _pulse(d, "no_chain", "--mapping", str(mapping)),
        ("stylegan2", write_rosinality(d / "empty_blur.pt", lambda c: c["g_ema"].update(
            {"convs.0.conv.blur.kernel": np.zeros((0, 0), np.float32)}))),
        ("stylegan2", write_rosinality(d / "overflow.pt", lambda c: c.update(
            {"latent_avg": np.full(8, 1e300, np.float64)}))),
        ("stylegan2", write_tf(d / "tf_array_kwarg.pkl", lambda gs: gs["static_kwargs"].update(
            {"architecture": np.zeros(3, np.float32)}))),
        ("stylegan2", write_tf(d / "tf_array_name.pkl", lambda gs: gs.update(
            {"name": np.zeros(3, np.float32)}))),
    ]  # fmt: skip


def _pulse_synthesis_with(path: Path, key: str) -> Path:
    from pulse_jax.checkpoints.torch_format import load_state_dict

    sd = load_state_dict(_synthesis())
    sd[key] = np.zeros((1, 1, 3, 3), np.float32)
    save_torch_legacy(sd, path)
    return path


FORGED = "\n\x1b[2K\x1b[1Awrote fake.npz\r\x1b[31m"


def _control_cases(d: Path) -> list:
    """Class 5: names and file names that would forge terminal lines."""
    odd = d / f"x{FORGED}.pkl"
    odd.write_bytes(b"\x80\x04junk")
    inputs = d / "inputs"
    inputs.mkdir()
    (inputs / "x\nsamples: 1 written, 1 reached eps.png").write_bytes(b"not an image")
    weights = d / f"w{FORGED}.npz"
    weights.write_bytes(b"PK\x05\x06" + bytes(18))
    out = d / "odd.npz"
    return [
        ("stylegan2", write_tf(d / "tf_ansi.pkl", lambda gs: gs["variables"].append(
            (FORGED, "not an array")))),
        ("stylegan2", write_ada(d / "ada_ansi.pkl", lambda g: g.state["_parameters"].update(
            {FORGED: np.zeros(1, np.float32)}))),
        ("convert", ["stylegan2", "--checkpoint", str(odd), "--out", str(out)], out),
        ("generator", weights),
        ("inputs", inputs),
        ("torch", _write(d / f"t{FORGED}.pt", b"\x80\x02junk")),
    ]  # fmt: skip


def _ambiguity_cases(d: Path) -> list:
    """Class 6: one name that could be read two ways."""
    weight = np.ones((4, 4, 3, 3), np.float32)

    def dotted_module(g):
        g.state["_modules"]["synthesis.b4.conv1"] = module({"_parameters": {"weight": weight}})

    def dotted_parameter(g):
        synthesis = g.state["_modules"]["synthesis"]
        synthesis.state.setdefault("_parameters", {})["b4.conv1.weight"] = weight

    def module_and_tensor(g):
        g.state.setdefault("_parameters", {})["synthesis"] = weight

    def tf_twice(gs):
        inner = dict(gs["components"]["synthesis"]._state["variables"])
        gs["variables"].append(("synthesis/4x4/Const/const", inner["4x4/Const/const"] + 1))

    def tf_slash(gs):
        gs["components"]["synthesis/4x4"] = gs["components"]["synthesis"]

    def rosi_zero(c):
        c["g_ema"]["noises.noise_01"] = c["g_ema"]["noises.noise_1"] + 1

    return [
        ("stylegan2", write_ada(d / "dotted_module.pkl", dotted_module)),
        ("stylegan2", write_ada(d / "dotted_parameter.pkl", dotted_parameter)),
        ("stylegan2", write_ada(d / "module_and_tensor.pkl", module_and_tensor)),
        ("stylegan2", write_tf(d / "tf_twice.pkl", tf_twice)),
        ("stylegan2", write_tf(d / "tf_slash.pkl", tf_slash)),
        ("stylegan2", write_rosinality(d / "rosi_zero.pt", rosi_zero)),
    ]


def _special_cases(d: Path) -> list:
    """Class 7: FIFOs and links to /dev/zero where a file belongs."""
    fifo = d / "fifo.pkl"
    os.mkfifo(fifo)
    zero = d / "zero.pkl"
    zero.symlink_to("/dev/zero")
    out = d / "special.npz"
    fit = ["--gaussian_fit", str(zero)]
    sha = ["--sha256", "0" * 64]
    return [
        ("convert", ["stylegan2", "--checkpoint", str(fifo), "--out", str(out)], out),
        ("convert", ["nvidia", "--pkl", str(zero), "--out", str(out)], out),
        ("convert", ["stylegan2", "--checkpoint", str(zero), *sha, "--out", str(out)], out),
        ("convert", ["pulse", "--synthesis", _synthesis(), *fit, "--out", str(out)], out),
        ("convert", ["pulse", "--synthesis", str(fifo), *fit, "--out", str(out)], out),
        ("generator", zero),
        ("generator", fifo),
        ("image", fifo),
        ("image", zero),
        ("torch", zero),
    ]


def zero_png(width: int, height: int) -> bytes:
    """A real grey PNG of this size, all zero: a few hundred KB that decode to width x height
    bytes (13000 x 13000: 169 MB, and several times that while Pillow converts it)."""
    rows = zlib.compressobj(9)
    row = bytes(width + 1)  # filter byte 0, then the pixels
    idat = b"".join(rows.compress(row) for _ in range(height)) + rows.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body).to_bytes(4, "big")
        return len(body).to_bytes(4, "big") + kind + body + crc

    header = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    return (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


def _image_cases(d: Path) -> list:
    """Class 9: containers whose inner image is far above the pixel limit (Pillow decodes
    an ICO's, CUR's or ICNS's inner PNG while opening it, before any size check)."""
    big = d / "big.png"
    png_with_size(big, 13000, 13000)
    inner = zero_png(13000, 13000)
    tiff = d / "big.tif"
    from PIL import Image

    Image.new("L", (4, 4)).save(tiff)
    data = tiff.read_bytes()
    for tag in (b"\x00\x01", b"\x01\x01"):  # ImageWidth, ImageLength: 4 -> 100,000 (LONG)
        entry = tag + b"\x04\x00\x01\x00\x00\x00\x04\x00\x00\x00"
        assert entry in data
        data = data.replace(entry, tag + b"\x04\x00\x01\x00\x00\x00\xa0\x86\x01\x00", 1)
    tiff.write_bytes(data)
    return [
        ("image", ico(d / "big.ico", inner)),
        ("image", ico(d / "big.cur", inner, kind=2)),
        ("image", icns(d / "big.icns", inner)),
        ("image", big),
        ("image", tiff),
    ]


def _release_cases(d: Path) -> list:
    """Class 10: a refusal after large arrays were read: nothing of them stays alive."""
    big = np.ones((1 << 20,), np.float32)  # 4 MB

    def tf_late(gs):  # refused while collecting, after the big variable was collected
        gs["variables"].append(("big", big))
        gs["components"]["zzz"] = "not a network"

    return [
        ("stylegan2", write_tf(d / "tf_big_then_bad.pkl", tf_late)),
        ("stylegan2", write_tf(d / "tf_big_twice.pkl", lambda gs: gs["variables"].extend(
            [("big", big), ("synthesis/x", big), ("synthesis/x", big)]))),
        ("stylegan2", write_ada(d / "ada_big_then_bad.pkl", lambda g: g.state["_buffers"].update(
            {"big": big, "x.y": big}))),
        ("stylegan2", write_rosinality(d / "rosi_big_then_bad.pt", lambda c: c["g_ema"].update(
            {"big": big}))),
    ]  # fmt: skip


# --- the child -----------------------------------------------------------------------------


def run_child(good: list, cases: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    listing = [
        (name, kind, [str(a) for a in target] if isinstance(target, list) else str(target))
        for name, (kind, target) in cases.items()
    ]
    done = subprocess.run(
        [
            sys.executable,
            PROGRAMS / "promises.py",
            str(MEMORY_LIMIT),
            json.dumps(good),
            json.dumps(listing),
        ],
        capture_output=True,
        text=True,
        timeout=TIME_LIMIT,
        env=env,
    )
    outcomes = {}
    for line in done.stdout.splitlines():
        if line.startswith("OUTCOME "):
            found = json.loads(line[len("OUTCOME ") :])
            outcomes[found.pop("name")] = found
    assert done.returncode == 0 and len(outcomes) == len(cases), (
        f"the child ended with status {done.returncode} after {len(outcomes)} cases: "
        f"{done.stderr[-3000:]}"
    )
    return outcomes


CLASSES = {
    1: _time_cases,
    2: _memory_cases,
    3: _number_cases,
    5: _control_cases,
    6: _ambiguity_cases,
    7: _special_cases,
    9: _image_cases,
    10: _release_cases,
}


@pytest.fixture(scope="module")
def promises(tmp_path_factory):
    """Every case's file, written once, and its outcome in the child."""
    folder = tmp_path_factory.mktemp("promises")
    good_folder = tmp_path_factory.mktemp("good")
    ada_good = good_folder / "ada.pkl"
    ada_writer.write_ada_pickle(ada_good, ada_tree())
    rosinality = write_rosinality(good_folder / "rosinality.pt", lambda c: None)
    state = {"w": np.arange(12, dtype=np.float32).reshape(3, 4)}
    torch_good = good_folder / "good.pt"
    save_torch_zip(state, torch_good)
    weights = good_folder / "sg2.npz"
    checkpoint = read_stylegan2(ada_good)
    fit = {"mean": np.zeros(8, np.float32), "std": np.ones(8, np.float32)}
    convert.write_stylegan2_weights(weights, checkpoint, gaussian_fit=fit, show_progress=False)
    cases, files = {}, {}
    builders = CLASSES | {4: lambda d: _traceback_cases(d, weights)}
    for number, build in sorted(builders.items()):
        d = folder / f"class{number}"
        d.mkdir()
        for i, case in enumerate(build(d)):
            name = (
                f"{number}-{i}-{Path(str(case[1] if case[0] != 'convert' else case[2])).stem[:20]}"
            )
            cases[name] = case[:2]
            files[name] = case
    good = [
        ("torch", str(torch_good)),
        ("stylegan2", str(ada_good)),
        ("stylegan2", str(rosinality)),
        ("weights", str(weights)),
        ("generator", str(weights)),
    ]
    outcomes = run_child(good, cases)
    return files, outcomes


def _size(case) -> int:
    """Bytes of the regular files a case reads (a converter's every file argument)."""
    target = case[1]
    paths = [Path(a) for a in target] if isinstance(target, list) else [Path(target)]
    return sum(p.stat().st_size for p in paths if p.is_file())


@pytest.mark.slow  # the cases run in a child process
def test_every_case_is_refused_in_one_line_by_a_check(promises):
    files, outcomes = promises
    for name, outcome in outcomes.items():
        assert "crash" not in outcome, f"{name}: {outcome['crash']}"
        kind = files[name][0]
        if kind == "convert":
            assert outcome["status"] == 1, (name, outcome)
            lines = outcome["stderr"].splitlines()
            assert len(lines) == 1 and lines[0].startswith("error: "), (name, outcome["stderr"])
            message = lines[0]
            assert not files[name][2].exists(), f"{name} wrote {files[name][2]}"
        else:
            message = outcome["refused"]
            assert message is not None, f"{name} was read"
            assert outcome["stderr"] == "", (name, outcome["stderr"])
        assert "Traceback" not in message and "unchecked" not in message, (name, message)
        assert not CONTROL.search(message), (name, message)
        assert len(message) < 1200, (name, message[:300])


@pytest.mark.slow  # the cases run in a child process
def test_every_case_takes_seconds_and_memory_within_the_budget(promises):
    files, outcomes = promises
    for name, outcome in outcomes.items():
        assert outcome["seconds"] < CASE_SECONDS, (name, outcome["seconds"])
        size = _size(files[name])
        budget_mb = ((EXPANSION + 2) * size + SLACK + FIXED) / 2**20
        used = outcome["peak_mb"] - outcome["base_mb"]
        assert used <= budget_mb, (
            f"{name}: {used:.0f} MB above the baseline, budget {budget_mb:.0f}"
        )


@pytest.mark.slow  # the cases run in a child process
def test_nothing_large_stays_alive_and_the_next_good_files_read_exactly(promises):
    _, outcomes = promises
    for name, outcome in outcomes.items():
        assert outcome["good"], f"a good file read differently after {name}"
        # No reference cycle keeps what the failed read made alive until a collection.
        assert outcome["cycles_mb"] < 1, (name, outcome["cycles_mb"])


@pytest.mark.slow  # the cases run in a child process
def test_cases_per_class(promises):
    """At least 3 variants per class; the counts, worst time and memory are printed (-s)."""
    files, outcomes = promises
    counts = {}
    for name in files:
        counts[int(name.split("-")[0])] = counts.get(int(name.split("-")[0]), 0) + 1
    assert all(counts.get(n, 0) >= 3 for n in (1, 2, 3, 4, 5, 6, 7, 9, 10)), counts
    worst = max(outcomes, key=lambda n: outcomes[n]["seconds"])
    biggest = max(outcomes, key=lambda n: outcomes[n]["peak_mb"] - outcomes[n]["base_mb"])
    base = max(o["base_mb"] for o in outcomes.values())
    print(
        f"\ncases per class {dict(sorted(counts.items()))}; slowest {worst} "
        f"{outcomes[worst]['seconds']:.2f} s; most memory {biggest} "
        f"{outcomes[biggest]['peak_mb'] - outcomes[biggest]['base_mb']:.0f} MB above a "
        f"baseline of at most {base:.0f} MB"
    )


@pytest.mark.parametrize("variants", [20_000, 40_000])
def test_output_names_stay_linear_for_case_variants_of_one_stem(variants):
    """Class 8: 40,000 case variants of one stem (and their `_png` forms) get distinct names
    in about as long per name as 20,000 (the old probing was quadratic: 37 s for 20,000)."""
    stems = ["".join(c.upper() if i >> k & 1 else c for k, c in enumerate("abcdefghijklmnop"))
             for i in range(variants)]  # fmt: skip
    paths = [Path(f"{s}.png") for s in stems] + [Path("abcdefghijklmnop_png_2.jpg")]
    start = time.perf_counter()
    names = output_names(paths)
    assert time.perf_counter() - start < CASE_SECONDS
    assert len({n.casefold() for n in names.values()}) == len(paths)


def test_values_that_once_raised_convert_or_are_named(tmp_path):
    """Class 4, the other side: a numpy complex scalar or a 100-bit integer in ADA's
    `_init_kwargs` (once a TypeError from json.dumps) is recorded by name or value, and
    the conversion writes its file."""
    top = ada_tree()
    top["G_ema"].state["_init_kwargs"] = {"z": np.complex64(1 + 2j), "big": 10**30}
    ada_writer.write_ada_pickle(tmp_path / "c.pkl", top)
    np.savez(tmp_path / "fit.npz", mean=np.zeros(8, np.float32), std=np.ones(8, np.float32))
    out = tmp_path / "out.npz"
    argv = ["stylegan2", "--checkpoint", str(tmp_path / "c.pkl")]
    argv += ["--gaussian_fit", str(tmp_path / "fit.npz"), "--out", str(out)]
    assert convert.main(argv) == 0
    provenance = weights_file.load_weights(out).provenance
    assert provenance["checkpoint"]["init_kwargs"] == {"z": "complex", "big": 10**30}


def _raise(error: BaseException):
    raise error


@pytest.mark.parametrize(
    "error, words",
    [
        (MemoryError(), "needs more memory"),
        (RecursionError(), "nests too deeply"),
        (ZeroDivisionError("division by zero"), "unchecked ZeroDivisionError"),
        (KeyError("x\n\x1b[2K"), "unchecked KeyError"),
    ],
)
def test_the_boundary_turns_what_a_file_causes_into_one_line(error, words):
    with pytest.raises(CheckpointError) as e:
        with refusing("a\nfile.pt"):
            _raise(error)
    assert words in str(e.value) and str(e.value).startswith("a\\x0afile.pt: ")
    assert not CONTROL.search(str(e.value))
    assert e.value.__context__ is None or e.value.__context__.__traceback__ is None


def test_the_boundary_keeps_bugs_and_numeric_warnings_apart(monkeypatch):
    with pytest.raises(AttributeError):  # a bug: its traceback, not a refusal
        with refusing("f"):
            _raise(AttributeError("no such attribute"))
    with pytest.raises(CheckpointError, match="overflow"), refusing("f"):
        np.float32(3e38) * np.float32(10)  # a RuntimeWarning line outside the boundary
    with refusing("f"):
        assert np.float32(1e-38) * np.float32(1e-38) == 0  # underflow stays silent
    monkeypatch.setenv("PULSE_JAX_DEBUG", "1")
    with pytest.raises(ZeroDivisionError), refusing("f"):
        _raise(ZeroDivisionError())
    assert shown("a\x1b[31m\u202eb\n", 3) == "a\\x1b[..."


def test_a_run_summary_cannot_be_forged_by_file_names(tmp_path):
    """Class 5 at the launcher: an input named to print a line of its own, and a FIFO named
    with an ANSI escape, appear in the run's summary escaped, one line each."""
    from pulse_jax.images import special_files
    from pulse_jax.runs.engine import Summary
    from pulse_jax.runs.inputs import load_inputs

    (tmp_path / "x\nsamples: 1 written, 1 reached eps.png").write_bytes(b"not an image")
    os.mkfifo(tmp_path / "\x1b[1Afifo")
    inputs, errors = load_inputs(tmp_path, 64)
    summary = Summary(inputs=1, failed=errors, not_files=special_files(tmp_path))
    lines = summary.lines()
    assert not inputs and len(errors) == 1
    assert not any(CONTROL.search(line) for line in lines), lines
    assert [line for line in lines if line.startswith("samples:")] == [lines[1]]
