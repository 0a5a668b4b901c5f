"""ILO, Intermediate Layer Optimization (Daras et al., ICML 2021), on StyleGAN2, as pure
functions (docs/method.md section 12).

The search runs in stages. Stage 0 is a PULSE-like search of the latent (ILO's z, through
the gaussian fit's leaky-ReLU proxy) and the first noise maps; stage k >= 1 adds the output
of generator block k - 1 (the input of block k, "the layer") as a variable and renders the
image from block k on, with the RGB sum of the earlier blocks dropped, as ILO's code does.
After each stage the layer's next value is block k's output under the stage's final
variables. Each stage has its own Adam, learning-rate ramp, sphere radii and l1-ball
centres (the variables at the stage's start), as in ILO's `invert_`.

Rows are independent: every loss term is per row and the gradient is that of their sum
(ILO averages over its batch; its `main.py` runs one image at a time, and a mean over a
batch of one is the row's own loss). Images are ILO's raw [-1, 1] range throughout; targets
are given in [-1, 1] too (`to_raw` maps pulse_jax's [0, 1]).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pulse_jax import losses, optim, sphere
from pulse_jax.degrade.downscale import bicubic_downscale
from pulse_jax.generators import ops
from pulse_jax.options import OperatorName, SearchOptions

# ILO's learning-rate ramp (`LatentOptimizer.get_lr`, the StyleGAN2 projector's).
_RAMP_DOWN = 0.75
_RAMP_UP = 0.05
# ILO's sphere projection covers the latent rows and every noise map (docs/method.md §3).
_LATENT_AXES = (2,)
_NOISE_AXES = (1, 2)


@dataclasses.dataclass(frozen=True)
class IloOptions:
    """ILO's settings (its `configs/config.yaml`; per-stage lists indexed by stage).

    Attributes:
      steps: steps of each stage; stage k optimizes from block k (ILO: 50, 50, 25, 25).
      learning_rate: Adam's base learning rate of each stage (ILO: 0.1).
      lr_same_pace: the ramp runs over all stages' steps instead of each stage's.
      mse: weight of the (masked) mean squared error of each stage (ILO: 1).
      dead_zone: weight of the dead-zone L1 term of each stage (ILO: 0).
      dead_zone_alpha: its tolerance (ILO: 0.1).
      geocross: GEOCROSS weight on the latent, stage 0 only (ILO: 0.01; see section 12).
      sphere: project the latent rows and noise maps back to their stage-start radii.
      mask_black_pixels: pixels black in every channel of the target are unobserved.
      radius_layer, radius_latent, radius_noise: per-stage l1-ball radii around the stage's
        start (None: no projection, ILO's default); radius_layer[0] is unused.
      noise_layers: noise maps optimized in stage 0; stage k optimizes 2 k more.
    """

    steps: tuple[int, ...] = (50, 50, 25, 25)
    learning_rate: tuple[float, ...] = (0.1,) * 4
    lr_same_pace: bool = False
    mse: tuple[float, ...] = (1.0,) * 4
    dead_zone: tuple[float, ...] = (0.0,) * 4
    dead_zone_alpha: float = 0.1
    geocross: float = 0.01
    sphere: bool = True
    mask_black_pixels: bool = True
    radius_layer: tuple[float, ...] | None = None
    radius_latent: tuple[float, ...] | None = None
    radius_noise: tuple[float, ...] | None = None
    noise_layers: int = 5

    def check(self, num_blocks: int) -> None:
        """Refuses settings that cannot run on a generator of `num_blocks` blocks."""
        n = len(self.steps)
        if not 1 <= n <= num_blocks or any(int(s) < 1 for s in self.steps):
            raise ValueError(f"steps must be 1..{num_blocks} positive counts, got {self.steps}")
        for name in ("learning_rate", "mse", "dead_zone"):
            if len(getattr(self, name)) < n:
                raise ValueError(f"{name} needs a value for each of the {n} stages")
        for name in ("radius_layer", "radius_latent", "radius_noise"):
            radii = getattr(self, name)
            if radii is not None and (len(radii) < n or min(radii[:n]) < 0):
                raise ValueError(f"{name} needs a radius >= 0 for each of the {n} stages")

    def learning_rates(self, stage: int) -> list[float]:
        """The learning rate of each step of `stage`, in float64 as ILO's Python has it."""
        steps = self.steps[stage]
        span = sum(self.steps) if self.lr_same_pace else steps
        return [ramp(i / span, self.learning_rate[stage]) for i in range(steps)]


def ramp(t: float, initial_lr: float) -> float:
    """ILO's `get_lr`: a cosine ramp down over the last 75% of the stage, times a linear
    ramp up over its first 5% (0 at t = 0: each stage's first step only moves Adam's moments)."""
    lr_ramp = min(1.0, (1.0 - t) / _RAMP_DOWN)
    lr_ramp = 0.5 - 0.5 * math.cos(lr_ramp * math.pi)
    lr_ramp = lr_ramp * min(1.0, t / _RAMP_UP)
    return initial_lr * lr_ramp


def project_l1_ball(x: jax.Array, radius: float) -> jax.Array:
    """Euclidean projection of each row x[n] (all axes but the first) onto the l1 ball of
    `radius` (docs/method.md section 12): rows inside the ball stay as they are; the rest are
    soft-thresholded, sign(x) max(|x| - theta, 0), with theta the one that puts the row on
    the sphere, found from the sorted magnitudes (Duchi et al., ICML 2008, figure 1)."""
    rows = x.reshape(x.shape[0], -1)  # [N, M]
    mags = jnp.abs(rows)
    inside = jnp.sum(mags, axis=1) < radius  # [N]
    mu = -jnp.sort(-mags, axis=1)  # descending
    cumsum = jnp.cumsum(mu, axis=1)
    index = jnp.arange(1, rows.shape[1] + 1, dtype=rows.dtype)
    # rho: the largest j (1-based) with mu_j * j > cumsum_j - radius.
    rho = jnp.max(jnp.where(mu * index > cumsum - radius, index, 0), axis=1)  # [N]
    rho_index = jnp.maximum(rho.astype(jnp.int32) - 1, 0)
    theta = (jnp.take_along_axis(cumsum, rho_index[:, None], axis=1)[:, 0] - radius) / rho
    projected = jnp.maximum(mags - theta[:, None], 0.0) * jnp.sign(rows)
    return jnp.where(inside[:, None], rows, projected).reshape(x.shape)


def to_raw(images: jax.Array) -> jax.Array:
    """pulse_jax's [0, 1] images -> ILO's [-1, 1] (black stays exactly black: -1)."""
    return images * 2.0 - 1.0


def observed(ref: jax.Array, options: IloOptions) -> jax.Array:
    """ILO's mask [N, h, w, 1]: 0 where the target is -1 in every channel (with
    `mask_black_pixels`), else 1."""
    if not options.mask_black_pixels:
        return jnp.ones(ref.shape[:-1] + (1,), ref.dtype)
    black = jnp.sum(ref, axis=-1, keepdims=True) == -3.0
    return jnp.where(black, 0.0, 1.0).astype(ref.dtype)


def render(arch, params: dict, variables: dict, stage: int) -> jax.Array:
    """Stage `stage`'s raw image [N, R, R, 3]: the full network at stage 0, else blocks
    stage .. last from variables["layer"] without the earlier blocks' RGB."""
    fit = params["gaussian_fit"]
    dlatents = ops.leaky_relu(variables["latent"] * fit["std"] + fit["mean"], 0.2)
    if stage == 0:
        return arch.synthesize(params["synthesis"], dlatents, variables["noise"])
    synthesis = params["synthesis"]
    return arch.synthesize_from(
        synthesis, dlatents, variables["noise"], stage, variables["layer"], None
    )


def layer_output(arch, params: dict, variables: dict, stage: int) -> jax.Array:
    """Block `stage`'s output under the stage's variables: the next stage's layer."""
    fit = params["gaussian_fit"]
    dlatents = ops.leaky_relu(variables["latent"] * fit["std"] + fit["mean"], 0.2)
    noise = variables["noise"]
    if stage == 0:
        return arch.synthesize_to(params["synthesis"], dlatents, noise, 0)[0]
    synthesis = params["synthesis"]
    return arch.run_blocks(synthesis, dlatents, noise, variables["layer"], None, stage, stage)[0]


def loss_terms(
    arch, options: IloOptions, stage: int, factor: int, params, variables, ref, mask
) -> tuple[jax.Array, dict, jax.Array]:
    """Per row: (total [N], {"L2", "MSE", "DEAD_ZONE", "GEOCROSS", "TOTAL"} [N], image); L2
    is PULSE's (unmasked, images in [0, 1]), the rest ILO's."""
    image = render(arch, params, variables, stage)
    masked = bicubic_downscale(image, factor) * mask  # [N, h, w, 3]
    error = masked - ref
    mse = jnp.mean(error**2, axis=(1, 2, 3))
    dead_zone = jnp.mean(jnp.maximum(jnp.abs(error) - options.dead_zone_alpha, 0.0), axis=(1, 2, 3))
    total = options.dead_zone[stage] * dead_zone + options.mse[stage] * mse
    # ILO's GEOCROSS bites in stage 0 only (docs/method.md section 12).
    geocross = losses.geocross(variables["latent"]) if stage == 0 else jnp.zeros_like(mse)
    total = total + options.geocross * geocross
    # PULSE's criterion on the whole low-resolution image, in [0, 1] (for reports only).
    l2 = jnp.mean((bicubic_downscale(image, factor) - ref) ** 2, axis=(1, 2, 3)) / 4.0
    terms = {"L2": l2, "MSE": mse, "DEAD_ZONE": dead_zone, "GEOCROSS": geocross, "TOTAL": total}
    return total, terms, image


def _project(options: IloOptions, stage: int, variables, start, radii):
    """After Adam: the sphere (latent rows, every noise map), then the l1 balls around the
    stage's start (layer, latent, noise maps), in ILO's order."""
    latent, noise, layer = variables["latent"], list(variables["noise"]), variables["layer"]
    if options.sphere:
        latent = sphere.project_to_sphere(latent, radii["latent"], _LATENT_AXES)
        noise = [
            sphere.project_to_sphere(x, r, _NOISE_AXES)
            for x, r in zip(noise, radii["noise"], strict=True)
        ]

    def ball(x, centre, radii):
        return centre + project_l1_ball(x - centre, radii[stage])

    if stage and options.radius_layer is not None:
        layer = ball(layer, start["layer"], options.radius_layer)
    if options.radius_latent is not None:
        latent = ball(latent, start["latent"], options.radius_latent)
    if options.radius_noise is not None:
        noise = [
            ball(x, c, options.radius_noise) for x, c in zip(noise, start["noise"], strict=True)
        ]
    return {"latent": latent, "noise": noise, "layer": layer}


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4))
def run_stage(arch, options: IloOptions, stage: int, factor: int, keep: bool, params, ref, start):
    """One ILO stage over rows [N] (traceable; jitted here).

    Args:
      arch: a StyleGAN2 arch (`synthesize_from`, `run_blocks`).
      options, stage: the settings and the stage (its first block).
      factor: the downscaling factor from the generator's size to the target's.
      keep: also output the variables after every step.
      params: {"synthesis" (prepared), "gaussian_fit"}.
      ref: targets [N, h, w, 3] in [-1, 1].
      start: {"latent" [N, L, D], "noise" maps [N, r, r, 1], "layer" [N, r, r, C] or None}.

    Returns:
      (the variables after the stage, outputs): outputs["history"] holds each term of
      every step [steps, N] (before that step's update); "best_mse" [N], "best" [N, R, R, 3]
      and "best_step" [N] are the stage's lowest-MSE step's (ILO's `best`, raw); "layer_out"
      is the next stage's layer; with `keep`, "trajectory" the variables after each step and
      "image" the raw image of each step (before its update).
    """
    mask = observed(ref, options)
    trainable = {
        "latent": True,
        "noise": [i < options.noise_layers + 2 * stage for i in range(len(start["noise"]))],
        "layer": True if stage else None,  # None: no layer variable in stage 0
    }
    radii = {
        "latent": sphere.sphere_radius(start["latent"], _LATENT_AXES),
        "noise": [sphere.sphere_radius(x, _NOISE_AXES) for x in start["noise"]],
    }
    optimizer = optim.optimizer_for_rates("adam", options.learning_rates(stage))

    def objective(variables):
        total, terms, image = loss_terms(arch, options, stage, factor, params, variables, ref, mask)
        return jnp.sum(total), (terms, image)

    def body(carry, step):
        variables, opt_state, best = carry
        grads, (terms, image) = jax.grad(objective, has_aux=True)(variables)
        grads = jax.tree.map(lambda g, t: g if t else jnp.zeros_like(g), grads, trainable)
        updates, opt_state = optimizer.update(grads, opt_state)
        moved = _project(options, stage, optax.apply_updates(variables, updates), start, radii)
        better = terms["MSE"] < best["best_mse"]
        found = {
            "best_mse": terms["MSE"],
            "best": image,
            "best_step": jnp.broadcast_to(step, better.shape),
        }
        best = jax.tree.map(
            lambda f, b: jnp.where(better.reshape((-1,) + (1,) * (b.ndim - 1)), f, b), found, best
        )
        out = {"history": terms}
        if keep:
            out.update(trajectory=moved, image=image)
        return (moved, opt_state, best), out

    n, r, steps = ref.shape[0], arch.resolution, options.steps[stage]
    best = {
        "best_mse": jnp.full((n,), jnp.inf),
        "best": jnp.zeros((n, r, r, 3)),
        "best_step": jnp.zeros((n,), jnp.int32),
    }
    (final, _, best), outputs = jax.lax.scan(
        body, (start, optimizer.init(start), best), jnp.arange(steps, dtype=jnp.int32)
    )
    outputs.update(best, layer_out=layer_output(arch, params, final, stage))
    return final, outputs


def search(
    generator, ref: jax.Array, start: dict, options: IloOptions, *, keep: bool = False
) -> tuple[dict, list[dict]]:
    """ILO's stages one after another (`run_stage`), from `start` {"latent", "noise"}.

    Args:
      generator: a StyleGAN2 `Generator` with a gaussian fit.
      ref: targets [N, h, w, 3] in [-1, 1] (`to_raw`).
      start: {"latent": [N, L, D], "noise": maps [N, r, r, 1]}.
      options: ILO's settings.
      keep: each stage also outputs its variables after every step.

    Returns:
      (the final variables, each stage's outputs); the result is the last stage's "best".
    """
    arch = generator.arch
    check_arch(arch)
    options.check(arch.num_blocks)
    params = {
        "synthesis": arch.prepare(generator.params)["synthesis"],
        "gaussian_fit": generator.params["gaussian_fit"],
    }
    return _stages(arch, options, params, ref, start, keep)


def _stages(arch, options: IloOptions, params, ref, start, keep: bool):
    factor = arch.resolution // ref.shape[1]
    variables = dict(start, layer=None)
    stages = []
    for stage in range(len(options.steps)):
        variables, outputs = run_stage(arch, options, stage, factor, keep, params, ref, variables)
        stages.append(outputs)
        variables = dict(variables, layer=outputs["layer_out"])
    return variables, stages


def check_arch(arch) -> None:
    """Refuses a generator that cannot run from an intermediate layer."""
    if not hasattr(arch, "synthesize_from"):
        raise ValueError(
            f"mode ilo needs a generator that runs from an intermediate layer (StyleGAN2); "
            f"{type(arch).__name__} does not"
        )


def sample_start(arch, key: jax.Array, num_rows: int) -> dict:
    """ILO's start for `num_rows` rows: the latent and every noise map drawn from N(0, I)."""
    keys = jax.random.split(key, arch.num_noise_layers + 1)
    latent = jax.random.normal(keys[0], (num_rows, arch.num_layers, arch.dlatent_size))
    noise = []
    for i in range(arch.num_noise_layers):
        r = arch.noise_resolution(i)
        noise.append(jax.random.normal(keys[i + 1], (num_rows, r, r, 1)))
    return {"latent": latent, "noise": noise}


def result(stages: list[dict]) -> dict[str, Any]:
    """The search's answer: ILO's `best` (the last stage's lowest-MSE image) in [0, 1] and
    its MSE (masked, in ILO's [-1, 1] scale), per row."""
    last = stages[-1]
    return {
        "hr": np.clip((np.asarray(last["best"]) + 1.0) / 2.0, 0.0, 1.0),
        "mse": np.asarray(last["best_mse"]),
    }


# -- ILO as a search mode of `solve` (SearchOptions.mode = "ilo") ---------------------------

# ILO's default steps per stage, 50, 50, 25, 25: a run's steps are split in these proportions.
_STAGE_SHARES = (2, 2, 1, 1)
# The options ILO mode does not read: they must keep their defaults (PULSE's search only).
_PULSE_ONLY = (
    "loss_str",
    "noise_type",
    "num_trainable_noise_layers",
    "tile_latent",
    "opt_name",
    "learning_rate",
    "lr_schedule",
)


def stage_steps(steps: int, num_blocks: int) -> tuple[int, ...]:
    """A run's `steps` over ILO's stages (at most 4, at most one per block): one step each,
    the rest in ILO's proportions 2:2:1:1, what rounding leaves to the first stages:
    150 -> 50, 50, 25, 25; 100 -> 33, 33, 17, 17."""
    shares = _STAGE_SHARES[: min(len(_STAGE_SHARES), num_blocks)]
    if steps < len(shares):
        raise ValueError(f"mode ilo needs steps >= {len(shares)} (one per stage), got {steps}")
    rest = steps - len(shares)
    split = [1 + rest * s // sum(shares) for s in shares]
    for i in range(steps - sum(split)):
        split[i] += 1
    return tuple(split)


def check_search_options(options, arch) -> None:
    """Refuses `SearchOptions` that mode ilo cannot run (ValueError naming the option)."""
    check_arch(arch)
    defaults = SearchOptions()
    changed = [k for k in _PULSE_ONLY if getattr(options, k) != getattr(defaults, k)]
    if options.bad_noise_layers:
        changed.append("bad_noise_layers")
    if changed:
        raise ValueError(
            f"{', '.join(changed)}: PULSE's options; mode ilo runs with ILO's own settings"
        )
    if options.operator != OperatorName.BICUBIC:
        raise ValueError(f"mode ilo runs the bicubic operator only, not {options.operator}")
    stage_steps(options.steps, arch.num_blocks)


def options_for(program) -> IloOptions:
    """ILO's settings for a `search.Program` of mode ilo: ILO's defaults, the program's steps."""
    return IloOptions(steps=stage_steps(program.options.steps, program.arch.num_blocks))


def run_rows(program, params, ref, start) -> dict:
    """`search.run_rows` for mode ilo (traceable): ILO's stages over rows [N] with targets
    ref [N, h, w, 3] in [0, 1] and a PULSE start {"latent", "noise"}, as the same outputs:
    the last stage's lowest-MSE image ("hr", "lr" in [0, 1]), its unclamped L2 and success
    against eps, "best_step" counted over all stages, "final" (latent and noise), and the
    history [steps, N] of "L2", "MSE", "DEAD_ZONE", "GEOCROSS", "TOTAL" (plus, with
    `keep_intermediate`, "intermediate" and "variables")."""
    arch, keep = program.arch, program.keep_intermediate
    options = options_for(program)
    ilo_params = {"synthesis": params["synthesis"], "gaussian_fit": params["gaussian_fit"]}
    raw = to_raw(ref)
    final, stages = _stages(arch, options, ilo_params, raw, start, keep)
    last = stages[-1]
    lr = bicubic_downscale(last["best"], arch.resolution // ref.shape[1])
    l2 = jnp.mean((lr - raw) ** 2, axis=(1, 2, 3)) / 4.0
    failed = ~jnp.isfinite(last["best_mse"])
    out = {
        "hr": jnp.clip((last["best"] + 1.0) / 2.0, 0.0, 1.0),
        "lr": jnp.clip((lr + 1.0) / 2.0, 0.0, 1.0),
        "l2": l2,
        "success": ~failed & (l2 <= program.eps),
        "failed": failed,
        "best_step": last["best_step"] + sum(options.steps[:-1]),
        "final": {"latent": final["latent"], "noise": final["noise"]},
        "history": {
            k: jnp.concatenate([s["history"][k] for s in stages]) for k in stages[0]["history"]
        },
    }
    if keep:
        images = jnp.concatenate([s["image"] for s in stages])
        out["intermediate"] = jnp.clip((images + 1.0) / 2.0, 0.0, 1.0)
        out["variables"] = {
            k: jax.tree.map(lambda *xs: jnp.concatenate(xs), *[s["trajectory"][k] for s in stages])
            for k in ("latent", "noise")
        }
    return out
