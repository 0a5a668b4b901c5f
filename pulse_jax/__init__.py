"""pulse_jax: PULSE (CVPR 2020) self-supervised photo upsampling, in JAX.

import pulse_jax
generator = pulse_jax.load_generator("dcgan64")       # or a converted StyleGAN .npz
result = pulse_jax.solve(lr_images, generator, num_samples=4, steps=100)
result.hr, result.success, result.history["L2"]
"""

from pulse_jax.generators.base import Generator, SearchOptions
from pulse_jax.loading import load_generator
from pulse_jax.solve import SolveResult, solve

__version__ = "0.1.0"
__all__ = ["Generator", "SearchOptions", "SolveResult", "load_generator", "solve", "__version__"]
