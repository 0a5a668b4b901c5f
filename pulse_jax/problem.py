"""A search's inputs and outputs: what `solve` checks, how every row starts, what it returns.

`make_problem` checks `solve`'s arguments (images, samples, seeds, an explicit start) and
makes a `Problem`: the static `search.Program` (what is compiled: the generator's arch, the
options, the degradation) with the arrays it runs on (the generator's parameters, the
targets, each row's start). `to_result` shapes the rows' outputs into a `SolveResult`.
Sample s of the image with id i starts from fold_in(fold_in(key(seed), i), s)
(docs/method.md section 8.1); nothing here is part of the algorithm (`search`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax import lpips
from pulse_jax.generators.base import Arch, Generator
from pulse_jax.options import SearchOptions
from pulse_jax.search import Downscale, Program, make_program, static_field


@dataclasses.dataclass(frozen=True)
class SolveResult:
    """What `solve` returns; every array has leading axes [B, S] (images, samples).

    Attributes:
      hr: the sample's best image (lowest total loss over the steps), [B, S, R, R, 3] in [0, 1].
      lr: its downscale, [B, S, h, w, 3] in [0, 1].
      l2: its unclamped mean squared downscaling error, [B, S].
      success: `l2 <= eps` and no NaN, [B, S].
      failed: the sample's loss turned NaN (its variables stopped changing), [B, S].
      best_step: the step whose image is `hr`, [B, S].
      latent: the optimized latent after the last step, [B, S, ...].
      noise: StyleGAN noise maps after the last step, L arrays [B, S, r, r, 1] (empty for
        generators without noise).
      history: per loss term (as it enters the total, except `L2`, unclamped) and `TOTAL`,
        [steps, B, S], computed before that step's update.
      intermediate: the image at each step, [steps, B, S, R, R, 3], when asked for.
      trajectory: the variables after each step's update and projection, when asked for:
        {"latent": [steps, B, S, ...], "noise": L arrays [steps, B, S, r, r, 1]}.
    """

    hr: np.ndarray
    lr: np.ndarray
    l2: np.ndarray
    success: np.ndarray
    failed: np.ndarray
    best_step: np.ndarray
    latent: np.ndarray
    noise: list
    history: dict[str, np.ndarray]
    intermediate: np.ndarray | None = None
    trajectory: dict | None = None


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Problem:
    """A search's inputs: the static program (`search.Program`: what is compiled), the
    generator's (raw) parameters, the targets ref [N, h, w, 3] and the start (leaves
    [N, ...]), or [G, W, ...] for groups of rows, and the loss terms' parameters
    (`search.SearchState.loss_params`), whole on every device (the arrays it runs on)."""

    program: Program = static_field()
    num_samples: int = static_field()
    params: Any = None
    ref: Any = None
    start: Any = None
    loss_params: Any = None


def make_problem(
    lr_images,
    generator: Generator,
    options: SearchOptions,
    *,
    num_samples: int = 1, seed: Any = 0, init: dict | None = None, image_ids: Any = None,
    sample_ids: Any = None, downscale: Downscale | None = None,
    keep_intermediate: bool = False, remat: bool = False, progress_every: int = 0,
    lpips_weights: Any = None,
) -> tuple[Problem, int]:  # fmt: skip
    """`solve`'s arguments (but the devices) checked and made into a `Problem`; also returns
    B, the number of images. The keywords are `solve`'s; a loss with `LPIPS` takes
    `lpips_weights` (`lpips.LPIPSWeights`), by default the converted VGG16 weights
    (`lpips.load_lpips`; docs/lpips.md)."""
    lr_images = _check_images(lr_images, generator.resolution)
    batch, size = lr_images.shape[0], lr_images.shape[1]
    program = make_program(
        generator, size, options, downscale=downscale, keep_intermediate=keep_intermediate,
        remat=remat, progress_every=progress_every,
    )  # fmt: skip
    if init is None and sample_ids is not None:
        samples = _check_ids("sample_ids", sample_ids, None, ndim=2)
        if samples.shape[0] != batch:
            raise ValueError(f"sample_ids must have shape ({batch}, S), got {samples.shape}")
        num_samples = samples.shape[1]
    elif num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    else:
        samples = np.broadcast_to(np.arange(num_samples), (batch, num_samples))
    if init is None:
        start = _seeded_starts(program, seed, image_ids, samples)
    else:
        start = _start_from_init(generator, program.options, init, batch, num_samples)
    ref = jnp.repeat(jnp.asarray(lr_images), num_samples, axis=0)  # [N, h, w, 3]
    loss_params = None
    if "LPIPS" in program.term_names:
        if lpips_weights is None:
            lpips_weights = lpips.load_lpips(lpips.LOSS_BACKBONE)
        loss_params = {"LPIPS": lpips_weights}
    problem = Problem(program, int(num_samples), generator.params, ref, start, loss_params)
    return problem, batch


def _check_images(lr_images, resolution: int) -> np.ndarray:
    x = np.asarray(lr_images)
    if x.ndim != 4:
        raise ValueError(f"lr_images must be [B, h, w, 3], got shape {x.shape}")
    if x.shape[0] < 1:
        raise ValueError("lr_images holds no image")
    if x.shape[3] != 3:
        raise ValueError(f"lr_images must have 3 channels (RGB), got {x.shape[3]}")
    if x.shape[1] != x.shape[2]:
        raise ValueError(f"lr_images must be square, got {x.shape[1]}x{x.shape[2]}")
    if x.shape[1] > resolution or resolution % x.shape[1]:
        raise ValueError(
            f"image size {x.shape[1]} does not divide the generator's resolution {resolution}"
        )
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"lr_images must be floating point in [0, 1], got {x.dtype}")
    if not np.all(np.isfinite(x)) or x.min() < 0 or x.max() > 1:
        raise ValueError("lr_images must hold finite values in [0, 1]")
    return x.astype(np.float32)


def _check_ids(name: str, values, length: int | None, *, ndim: int) -> np.ndarray:
    """Seeds and sample indices are fold_in data: non-negative integers below 2**32."""
    x = np.asarray(values)
    if x.ndim != ndim or (length is not None and x.shape[0] != length) or 0 in x.shape:
        raise ValueError(f"{name} has shape {x.shape}; expected {ndim} non-empty axes")
    if not np.issubdtype(x.dtype, np.integer):
        raise ValueError(f"{name} must be integers, got {x.dtype}")
    if x.min() < 0 or x.max() >= 2**32:
        raise ValueError(f"{name} must be in [0, 2**32), got values in [{x.min()}, {x.max()}]")
    return x


def _seeded_starts(program: Program, seed, image_ids, samples: np.ndarray):
    """The starts of samples [B, S], seeded as docs/method.md section 8.1 states."""
    batch = samples.shape[0]
    ids = np.arange(batch) if image_ids is None else np.asarray(image_ids)
    if ids.shape != (batch,):
        raise ValueError(f"image_ids must have shape ({batch},), got {ids.shape}")
    seeds = np.asarray(seed)
    seeds = _check_ids("seed", np.full(batch, seeds) if seeds.ndim == 0 else seeds, batch, ndim=1)
    return sample_starts(
        program.arch,
        program.options,
        jnp.asarray(seeds, jnp.uint32),
        jnp.asarray(ids, jnp.uint32),
        jnp.asarray(samples, jnp.uint32),
    )


@functools.partial(jax.jit, static_argnums=(0, 1))
def sample_starts(arch: Arch, options: SearchOptions, seeds, image_ids, sample_ids):
    """seeds [B], image_ids [B], sample_ids [B, S] (uint32) -> starts with rows [N = B * S]."""

    def one(seed, image_id, sample):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), image_id), sample)
        return arch.sample_start(key, options)

    starts = jax.vmap(lambda t, i, ss: jax.vmap(lambda s: one(t, i, s))(ss))(
        seeds, image_ids, sample_ids
    )
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), starts)  # [N, ...]


def _start_from_init(generator: Generator, options: SearchOptions, init, batch, num_samples):
    template = jax.eval_shape(
        lambda: generator.arch.sample_start(jax.random.key(0), options)
    )  # per-sample shapes
    if not generator.has_noise:
        init = {"latent": init["latent"]}
    elif "noise" not in init:
        raise ValueError("init for StyleGAN needs 'latent' and 'noise'")
    try:
        leaves, treedef = jax.tree.flatten(init)
        want, want_def = jax.tree.flatten(template)
    except Exception as e:  # noqa: BLE001 - report any malformed structure the same way
        raise ValueError(f"malformed init: {e}") from None
    if treedef != want_def:
        raise ValueError(f"init must have the structure {want_def}, got {treedef}")
    out = []
    for leaf, spec in zip(leaves, want, strict=True):
        leaf = np.asarray(leaf, np.float32)
        expected = (batch, num_samples) + spec.shape
        if leaf.shape != expected:
            raise ValueError(f"init array has shape {leaf.shape}, expected {expected}")
        out.append(jnp.asarray(leaf.reshape((-1,) + spec.shape)))
    return jax.tree.unflatten(treedef, out)


def to_result(out: dict, batch: int, num_samples: int, steps: int) -> SolveResult:
    """Row outputs (`final_rows`, plus "history" and, where kept, "intermediate" and
    "variables" with a leading steps axis; rows past B x S are padding) -> a SolveResult."""
    n = batch * num_samples

    def unflat(x):
        return np.asarray(x)[:n].reshape((batch, num_samples) + np.shape(x)[1:])

    def unflat_steps(x):
        return np.asarray(x)[:, :n].reshape((steps, batch, num_samples) + np.shape(x)[2:])

    kept = out.get("intermediate") is not None
    final = out["final"]
    return SolveResult(
        hr=unflat(out["hr"]),
        lr=unflat(out["lr"]),
        l2=unflat(out["l2"]),
        success=unflat(out["success"]),
        failed=unflat(out["failed"]),
        best_step=unflat(out["best_step"]),
        latent=unflat(final["latent"]),
        noise=[unflat(x) for x in final.get("noise", [])],
        history={k: unflat_steps(v) for k, v in out["history"].items()},
        intermediate=unflat_steps(out["intermediate"]) if kept else None,
        trajectory=jax.tree.map(unflat_steps, out["variables"]) if kept else None,
    )
