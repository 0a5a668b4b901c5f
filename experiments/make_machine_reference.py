"""Writes tests/golden/machine_reference.npz: per-step L2 of two small searches, made on
one machine kind so that the suite measures another kind against it
(tests/test_sharding.py::test_results_across_machine_kinds).

    python experiments/make_machine_reference.py
"""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_sharding import small_stylegan_generator

from pulse_jax import load_generator, solve
from pulse_jax.runs.distributed import cpu_model

out = {}
lr = np.random.default_rng(5).uniform(size=(2, 16, 16, 3)).astype(np.float32)
r = solve(lr, load_generator("dcgan64"), num_samples=2, steps=20, seed=3)
out["dcgan_lr"], out["dcgan_l2_per_step"] = lr, r.history["L2"]
lr = np.random.default_rng(6).uniform(size=(2, 8, 8, 3)).astype(np.float32)
r = solve(lr, small_stylegan_generator(1), num_samples=2, steps=20, seed=3)
out["stylegan_lr"], out["stylegan_l2_per_step"] = lr, r.history["L2"]
out["machine"] = np.array(cpu_model())
np.savez(Path(__file__).resolve().parents[1] / "tests/golden/machine_reference.npz", **out)
print({k: v.shape for k, v in out.items()}, cpu_model())
