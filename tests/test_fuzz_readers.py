"""Seeded fuzzing of every foreign-file reader (issue 16): valid torch checkpoints (legacy
and zip), an NVIDIA pickle, a weights file, an NVIDIA StyleGAN2-ADA pickle and a
rosinality StyleGAN2 `.pt`, mutated thousands of times (bytes flipped,
the file cut, pickle opcodes swapped, chunks repeated, length fields overwritten; inside
a zip the member is mutated and packed again so the mutation reaches the parser). Half the
mutations aim at issue 21's classes: one SETITEMS of hash-colliding keys, floods of empty
containers or memo entries, names made long or given control characters, sizes set to 0 or
10^9. Every case must read or be refused with a one-line `CheckpointError` without control
characters, nothing else, in a child process under an address-space limit."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import ada_writer
from helpers.generators import tiny_dcgan_params
from helpers.hostile import MEMORY_LIMIT, PROGRAMS, ROOT
from helpers.stylegan_tf_writer import make_case
from helpers.torch_writer import TensorView, save_torch_legacy, save_torch_zip

from pulse_jax.checkpoints import torch_format, weights_file

pytestmark = pytest.mark.slow  # thousands of mutated files in a child process

GOLDEN = Path(__file__).parent / "golden" / "stylegan2"

# The StyleGAN2 readers take longer per case (every tensor of an ADA pickle is a torch
# payload of its own), so their files get fewer cases.
CASES = {"torch_legacy": 800, "torch_zip": 800, "nvidia": 800, "weights": 800}
CASES |= {"ada": 300, "rosinality": 300}
SEED = 16


def _base_files(folder) -> dict[str, str]:
    rng = np.random.default_rng(0)
    checkpoint = {
        "w": rng.standard_normal((3, 4)).astype(np.float32),
        "n": np.array([1, 2], np.int64),
        "view": TensorView(np.arange(8, dtype=np.float32), 2, (2, 2), (1, 2)),
        "meta": {"epoch": 3, "name": "tiny", "sizes": (1, 2.5, None, True)},
    }
    save_torch_legacy(checkpoint, folder / "legacy.pt")
    save_torch_zip(checkpoint, folder / "zip.pt")
    nvidia, *_ = make_case(folder, 16, fmap_base=16, fmap_max=4, dlatent=8)
    weights = folder / "w.npz"
    config = {"latent_size": 4, "resolution": 64}
    weights_file.save_weights(weights, kind="dcgan", params=tiny_dcgan_params(), config=config)
    ada_writer.write_ada_pickle(
        folder / "ada.pkl", ada_writer.small_tree(GOLDEN / "sg2ada_clamp.pkl")
    )
    golden = torch_format.load_state_dict(GOLDEN / "sg2_rosinality_tiny.pt", "g_ema")
    rosinality = {"g_ema": ada_writer.small_rosinality_state(golden)}
    save_torch_zip(rosinality | {"latent_avg": np.ones(8, np.float32)}, folder / "rosinality.pt")
    files = {"torch_legacy": "legacy.pt", "torch_zip": "zip.pt", "nvidia": nvidia.name}
    files |= {"weights": "w.npz", "ada": "ada.pkl", "rosinality": "rosinality.pt"}
    return {fmt: str(folder / name) for fmt, name in files.items()}


def test_mutated_files_are_read_or_refused_with_a_checkpoint_error(tmp_path):
    files = _base_files(tmp_path)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    argv = [
        sys.executable,
        PROGRAMS / "fuzz_readers.py",
        str(MEMORY_LIMIT),
        json.dumps(CASES),
        str(SEED),
    ]
    argv += [json.dumps(files), str(tmp_path)]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in done.stdout.splitlines() if line.startswith("REPORT ")]
    assert done.returncode == 0 and lines, done.stderr[-3000:]
    report = json.loads(lines[-1][len("REPORT ") :])
    print(
        f"fuzz: {report['cases']} cases, {report['read']} read, {report['refused']} refused "
        f"({report['unchecked']} by the unchecked-error boundary), "
        f"worst {report['worst_seconds']:.3f} s, peak {report['max_rss_mb']:.0f} MB"
    )
    assert not report["failures"], "\n".join(report["failures"][:5])
    assert report["cases"] == sum(CASES.values())
    assert report["refused"] > report["cases"] // 4  # the mutations do reach the parsers
    assert report["worst_seconds"] < 5 and report["max_rss_mb"] < 1024
