"""Random LPIPS weights, the same in numpy-only scripts and in tests (not library code).

Each array is drawn from its own numpy generator seeded by (seed, crc32 of its path), so
the golden script (tests/golden/lpips/make_golden.py, run with torch and no JAX) and the
parity test build identical weights from the names and shapes alone, in any order.
"""

from __future__ import annotations

import zlib

import numpy as np


def random_array(path: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    """He-uniform convolution weights (HWIO), small biases, lin weights in [0, 1)."""
    rng = np.random.default_rng([seed, zlib.crc32(path.encode())])
    if path.startswith("lin/"):
        values = rng.uniform(0.0, 1.0, shape)
    elif path.endswith("/bias"):
        values = rng.uniform(-0.1, 0.1, shape)
    else:
        fan_in = shape[0] * shape[1] * shape[2]
        values = rng.uniform(-1.0, 1.0, shape) * np.sqrt(6.0 / fan_in)
    return values.astype(np.float32)


def random_params(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    """{path: random_array(path, shape, seed)} for flat LPIPS paths and shapes."""
    return {path: random_array(path, shape, seed) for path, shape in shapes.items()}
