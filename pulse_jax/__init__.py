"""pulse_jax: PULSE (CVPR 2020) self-supervised photo upsampling, in JAX.

import pulse_jax
generator = pulse_jax.load_generator("dcgan64")       # or a converted StyleGAN .npz
options = pulse_jax.SearchOptions(steps=100)            # PULSE's options, typed, checked
result = pulse_jax.solve(lr_images, generator, options, num_samples=4)
result.hr, result.success, result.history["L2"]

`solve(lr_images, generator, steps=100)` builds the same options. A search step by step:
`state = pulse_jax.init(lr_images, generator, options)`, `state, out = pulse_jax.step(state)`
per step, `pulse_jax.finalize(state, outputs)`. `pulse_jax.lower(...)` is the program
`solve` would run; `solve(..., progress=fn)` hands `fn` a `SearchProgress` during the search.
"""

from pulse_jax import _moved  # noqa: F401 - first: old module paths keep working for a release
from pulse_jax.checkpoints.loading import load_generator
from pulse_jax.generators.base import Generator
from pulse_jax.options import SearchOptions
from pulse_jax.problem import SolveResult
from pulse_jax.search import SearchState, step
from pulse_jax.solve import SearchProgress, finalize, init, lower, solve

__version__ = "0.1.0"
__all__ = [
    "Generator",
    "SearchOptions",
    "SearchProgress",
    "SearchState",
    "SolveResult",
    "finalize",
    "init",
    "load_generator",
    "lower",
    "solve",
    "step",
    "__version__",
]
