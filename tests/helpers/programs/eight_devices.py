"""One and eight CPU devices on the same searches (tests/test_sharding.py); run with
XLA_FLAGS=--xla_force_host_platform_device_count=8. Prints one JSON line of max-abs gaps.

    python tests/helpers/programs/eight_devices.py
"""

# ruff: noqa: E402  (the address-space limit and the path to helpers/ come before imports)

import json
import sys
from pathlib import Path

import jax
import numpy as np

from pulse_jax import load_generator, solve

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # tests/, for helpers
from helpers.generators import small_stylegan_generator

assert len(jax.devices()) == 8, jax.devices()


def gap(a, b):
    def arrays(r):
        return [r.hr, r.lr, r.l2, r.latent, r.best_step, r.success, *r.noise, *r.history.values()]

    return max(
        float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
        for x, y in zip(arrays(a), arrays(b), strict=True)
    )


rng = np.random.default_rng(0)
out = {}
for name, generator, size in [
    ("dcgan", load_generator("dcgan64"), 16),
    ("stylegan", small_stylegan_generator(0), 4),
]:
    lr = rng.uniform(size=(5, size, size, 3)).astype(np.float32)
    kwargs = dict(num_samples=1, steps=3, seed=[3, 3, 9, 9, 4], batch_per_device=2)
    eight = solve(lr, generator, **kwargs)  # 5 rows padded to 16 over 8 devices
    one = solve(lr, generator, devices=jax.devices()[:1], **kwargs)  # 3 groups of 2
    # A different batch on 3 devices: rows 3, 1 of the batch above, in another order.
    part = solve(
        lr[[3, 1]],
        generator,
        num_samples=1,
        steps=3,
        seed=[9, 3],
        image_ids=[3, 1],
        batch_per_device=2,
        devices=jax.devices()[5:8],
    )
    out[name] = {
        "shape": list(eight.hr.shape),
        "one_vs_eight": gap(one, eight),
        "other_batch": max(
            float(np.max(np.abs(part.hr[0] - one.hr[3]))),
            float(np.max(np.abs(part.hr[1] - one.hr[1]))),
            float(np.max(np.abs(part.latent[0] - one.latent[3]))),
            float(np.max(np.abs(part.latent[1] - one.latent[1]))),
        ),
    }
print(json.dumps(out))
