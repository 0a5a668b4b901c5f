"""One of two processes joined over loopback (tests/helpers/two_processes.py); solves over
both processes' devices and saves the whole result.

    python tests/helpers/programs/two_hosts.py COORDINATOR_ADDRESS PROCESS_ID OUT.npz
"""

# ruff: noqa: E402  (the address-space limit and the path to helpers/ come before imports)

import sys

import numpy as np

from pulse_jax.runs import distributed

assert distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
import jax

from pulse_jax import load_generator, solve

assert len(jax.devices()) == 2 and len(jax.local_devices()) == 1
lr = np.random.default_rng(0).uniform(size=(3, 16, 16, 3)).astype(np.float32)
r = solve(lr, load_generator("dcgan64"), steps=3, seed=4, batch_per_device=2)
np.savez(sys.argv[3], hr=r.hr, latent=r.latent, l2=r.l2, total=r.history["TOTAL"])
