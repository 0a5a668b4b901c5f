"""NVIDIA's StyleGAN2 projector as pure functions (docs/method.md section 11).

The search variables of a sample are one w [C] (tiled over every style row) and every
noise map of the generator; w starts at the mapping network's mean `w_avg` and the noise
maps at N(0, 1). Each step (`step`) draws a Gaussian perturbation of w whose scale ramps
from `initial_noise_factor * w_std` to 0, renders the tiled perturbed w, measures the
distance to the target, adds the noise maps' multi-scale autocorrelation penalty, takes one
torch-equivalent Adam step at the ramped learning rate (`optim.optimizer_for_rates`) and
renormalises every noise map to zero mean and unit mean square.

The distance is a function of the rendered images in [0, 1] and the target. NVIDIA's is
LPIPS (VGG16) on the image at the generator's size (area-downsampled to 256 px above it);
in super-resolution the target is the low-resolution input, so here the distance compares
the degraded render with it, as PULSE's loss does: `l2_through(downscale)` is PULSE's L2 at
the low resolution (docs/method.md section 4). Every array carries a leading sample axis
[N, ...]; the samples (targets x seeds) are independent (the loss is a sum of per-sample
terms and every update elementwise).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from pulse_jax import losses, optim

# images [N, R, R, 3] in [0, 1], target [N, ...] -> distance [N]
Distance = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class ProjectorSettings:
    """The projector's hyperparameters; the defaults are NVIDIA's `project()` defaults."""

    num_steps: int = 1000
    w_avg_samples: int = 10000
    initial_learning_rate: float = 0.1
    initial_noise_factor: float = 0.05
    lr_rampdown_length: float = 0.25
    lr_rampup_length: float = 0.05
    noise_ramp_length: float = 0.75
    regularize_noise_weight: float = 1e5

    def __post_init__(self):
        if isinstance(self.num_steps, bool) or not isinstance(self.num_steps, int):
            raise ValueError(f"num_steps must be an integer, got {self.num_steps!r}")
        if self.num_steps < 1 or self.w_avg_samples < 2:
            raise ValueError("num_steps must be >= 1 and w_avg_samples >= 2")
        lengths = (self.lr_rampdown_length, self.lr_rampup_length, self.noise_ramp_length)
        if not all(math.isfinite(x) and x > 0 for x in lengths):
            raise ValueError(f"the ramp lengths must be positive, got {lengths}")

    def learning_rates(self) -> np.ndarray:
        """[num_steps] float64: the cosine ramp-down over the last `lr_rampdown_length` of
        the run times the linear ramp-up over the first `lr_rampup_length` (0 at step 0)."""
        t = np.arange(self.num_steps, dtype=np.float64) / self.num_steps
        ramp = np.minimum(1.0, (1.0 - t) / self.lr_rampdown_length)
        ramp = 0.5 - 0.5 * np.cos(ramp * np.pi)
        ramp = ramp * np.minimum(1.0, t / self.lr_rampup_length)
        return self.initial_learning_rate * ramp

    def w_noise_factors(self) -> np.ndarray:
        """[num_steps] float64: the w perturbation's scale over `w_std`, a quadratic ramp
        from `initial_noise_factor` to 0 at `noise_ramp_length` of the run."""
        t = np.arange(self.num_steps, dtype=np.float64) / self.num_steps
        return self.initial_noise_factor * np.maximum(0.0, 1.0 - t / self.noise_ramp_length) ** 2


class ProjectorState(NamedTuple):
    """One pytree: the variables, Adam's state and the step count.

    Attributes:
      w: [N, C], the one w of each sample.
      noise: every noise map, [N, r, r, 1] each (the arch's `noise_resolution` order).
      opt_state: the optimizer's state over {"w", "noise"}.
      count: int32 scalar, the steps taken.
    """

    w: jax.Array
    noise: list
    opt_state: Any
    count: jax.Array


class StepReport(NamedTuple):
    """Per sample [N]: the distance, the noise regulariser and their weighted sum, before
    the step's update."""

    distance: jax.Array
    regularizer: jax.Array
    loss: jax.Array


def w_stats(arch, mapping: dict, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The projector's start and scale of W from mapping samples z [S, z_dim].

    Returns:
      w_avg [C], the mean of the samples' w, and w_std, the scalar root of the mean over
      samples of |w - w_avg|^2 (a norm over all C channels, not a per-channel std).
    """
    w = arch.map(mapping, z)  # [S, C]
    w_avg = jnp.mean(w, axis=0)
    w_std = jnp.sqrt(jnp.sum((w - w_avg) ** 2) / w.shape[0])
    return w_avg, w_std


def sample_w_stats(arch, mapping: dict, key: jax.Array, settings: ProjectorSettings):
    """`w_stats` of `settings.w_avg_samples` draws z ~ N(0, I) from `key`."""
    z = jax.random.normal(key, (settings.w_avg_samples, arch.latent_size), jnp.float32)
    return w_stats(arch, mapping, z)


def noise_regularizer(noise: list) -> jax.Array:
    """Per sample [N]: over every map and every scale of it (the map, then its 2x2 means,
    down to 8 px or less), the squared means of the map times itself shifted one pixel
    along W and along H, circularly."""
    total = 0.0
    for maps in noise:
        x = maps[..., 0]  # [N, r, r]
        while True:
            for axis in (2, 1):
                total = total + jnp.mean(x * jnp.roll(x, 1, axis=axis), axis=(1, 2)) ** 2
            if x.shape[1] <= 8:
                break
            n, r = x.shape[0], x.shape[1] // 2
            x = x.reshape(n, r, 2, r, 2).mean(axis=(2, 4))
    return total


def normalize_noise(noise: list) -> list:
    """Each sample's maps to zero mean, then to unit mean square."""
    out = []
    for maps in noise:
        maps = maps - jnp.mean(maps, axis=(1, 2, 3), keepdims=True)
        out.append(maps * jax.lax.rsqrt(jnp.mean(maps * maps, axis=(1, 2, 3), keepdims=True)))
    return out


def l2_through(downscale: Callable[[jax.Array], jax.Array]) -> Distance:
    """The distance PULSE's L2 gives: mean square of downscale(images) - target, per sample."""
    return lambda images, target: losses.l2_error(downscale(images), target)


def _optimizer(settings: ProjectorSettings):
    return optim.optimizer_for_rates("adam", settings.learning_rates())


def start(w: jax.Array, noise: list, settings: ProjectorSettings) -> ProjectorState:
    """The state before the first step at the given variables (w [N, C], noise maps)."""
    opt_state = _optimizer(settings).init({"w": w, "noise": noise})
    return ProjectorState(w, noise, opt_state, jnp.zeros([], jnp.int32))


def render(arch, params: dict, w: jax.Array, noise: list) -> jax.Array:
    """One w per sample [N, C], tiled over the style rows -> images [N, R, R, 3] in [0, 1]."""
    ws = jnp.broadcast_to(w[:, None, :], (w.shape[0], arch.num_layers, w.shape[1]))
    return (arch.synthesize(params["synthesis"], ws, noise) + 1.0) / 2.0


def step(
    arch,
    params: dict,
    settings: ProjectorSettings,
    distance: Distance,
    state: ProjectorState,
    target: jax.Array,
    w_noise_unit: jax.Array,
    w_std: jax.Array,
) -> tuple[ProjectorState, StepReport, jax.Array]:
    """One projector step; `w_noise_unit` [N, C] is the step's N(0, 1) draw for w.

    Returns:
      The next state, the step's report and the images it rendered [N, R, R, 3] in [0, 1]
      (before the update).
    """
    index = jnp.minimum(state.count, settings.num_steps - 1)
    scale = w_std * jnp.asarray(settings.w_noise_factors(), jnp.float32)[index]
    weight = settings.regularize_noise_weight

    def objective(variables):
        images = render(arch, params, variables["w"] + w_noise_unit * scale, variables["noise"])
        dist = distance(images, target)
        reg = noise_regularizer(variables["noise"])
        loss = dist + reg * weight
        return jnp.sum(loss), (StepReport(dist, reg, loss), images)

    variables = {"w": state.w, "noise": state.noise}
    grads, (report, images) = jax.grad(objective, has_aux=True)(variables)
    updates, opt_state = _optimizer(settings).update(grads, state.opt_state)
    variables = jax.tree.map(lambda p, u: p + u, variables, updates)
    noise = normalize_noise(variables["noise"])
    return ProjectorState(variables["w"], noise, opt_state, state.count + 1), report, images


def sample_start(arch, key: jax.Array) -> dict:
    """One row's start: its noise maps N(0, 1) [r, r, 1] and the key data of its per-step
    w draws ("draws", uint32)."""
    noise_key, draw_key = jax.random.split(key)
    keys = jax.random.split(noise_key, arch.num_noise_layers)
    noise = [
        jax.random.normal(k, (arch.noise_resolution(i), arch.noise_resolution(i), 1))
        for i, k in enumerate(keys)
    ]
    return {"noise": noise, "draws": jax.random.key_data(draw_key)}


def run(
    arch,
    params: dict,
    target: jax.Array,
    starts: dict,
    *,
    settings: ProjectorSettings,
    distance: Distance,
    w_avg: jax.Array,
    w_std: jax.Array,
    outputs: Callable = lambda state, report, images: report,
) -> tuple[ProjectorState, Any]:
    """`settings.num_steps` steps of N rows under one `lax.scan`, from w_avg and the rows'
    starts (`sample_start`, rows [N, ...]): row n's step k draws its w noise from its own
    key folded with k, so a row's run does not depend on the other rows.

    Args:
      arch, params: a style generator (params with "synthesis"; raw or prepared).
      target: [N, ...], what `distance` compares each row's render with.
      starts: {"noise": maps [N, r, r, 1], "draws": key data [N, ...]}.
      settings, distance: the hyperparameters and the distance (static).
      w_avg, w_std: `w_stats` of the generator.
      outputs: (state after the step, its report, the images it rendered) -> what the scan
        stacks per step (by default the report).

    Returns:
      The final state (w after the last step, the renormalised noise maps) and the
      stacked per-step outputs, [num_steps, N, ...].
    """
    params = arch.prepare(params)
    w = jnp.broadcast_to(jnp.asarray(w_avg, jnp.float32), (target.shape[0], w_avg.shape[-1]))

    def body(state, k):
        draw = jax.vmap(lambda d: jax.random.normal(_step_key(d, k), (arch.dlatent_size,)))
        unit = draw(starts["draws"])  # [N, C]
        state, report, images = step(arch, params, settings, distance, state, target, unit, w_std)
        return state, outputs(state, report, images)

    state = start(w, starts["noise"], settings)
    return jax.lax.scan(body, state, jnp.arange(settings.num_steps))


def project(arch, params: dict, target: jax.Array, key: jax.Array, **kwargs: Any):
    """`run` for N rows started from `key` (row n from `fold_in(key, n)`); keywords as
    `run`'s."""
    keys = jax.vmap(lambda n: jax.random.fold_in(key, n))(jnp.arange(target.shape[0]))
    return run(arch, params, target, jax.vmap(lambda k: sample_start(arch, k))(keys), **kwargs)


# -- the search mode `projector` (docs/method.md section 11.3) ------------------------------

# The key of the W statistics: fixed, as NVIDIA's `RandomState(123)`, so that every run of a
# generator starts from the same w_avg whatever its seed.
W_STATS_SEED = 123


def mode_rows(program, params: dict, ref: jax.Array, starts: dict, loss_params: Any = None) -> dict:
    """`search.run_rows` for the projector: `program.options.steps` steps of rows with
    targets ref [N, h, w, 3] and starts (`sample_start`, rows [N, ...]); the distance is the
    loss string's terms (GEOCROSS 0: w is tiled) between the degraded render and ref.

    Returns:
      `search.final_rows`' entries for the final w and noise (the image rendered after the
      last step, `best_step` = steps), with "history" per step: the loss terms, L2
      (unclamped), NOISE_REG and TOTAL [steps, N]; with `keep_intermediate`, also the images
      rendered and the variables after each step. `loss_params` as `search.SearchState`'s
      (the LPIPS weights where the loss string has LPIPS: then NVIDIA's own distance).
    """
    arch, options = program.arch, program.options
    if "mapping" not in params:
        raise ValueError("the projector needs the generator's mapping network")
    settings = ProjectorSettings(num_steps=options.steps)
    key = jax.random.key(W_STATS_SEED)
    w_avg, w_std = sample_w_stats(arch, params["mapping"], key, settings)

    def terms(images, target):
        gen_lr = program.downscale(images)
        names = program.term_names
        perceptual = None
        if "LPIPS" in names:  # NVIDIA's distance, at the observation's size (docs/lpips.md)
            weights = loss_params["LPIPS"]
            perceptual = losses.lpips_term(weights, program.downscale, images, gen_lr, target)
        found = losses.loss_terms(
            gen_lr, target, None, eps=program.eps, names=names, tiled=True, lpips=perceptual
        )
        return found, losses.l2_error(gen_lr, target)

    def distance(images, target):
        return losses.total_loss(terms(images, target)[0], options.loss)

    def history(state, report, images):
        found, l2 = terms(images, ref)
        out = {"history": dict(found, L2=l2, NOISE_REG=report.regularizer, TOTAL=report.loss)}
        if program.keep_intermediate:
            out["intermediate"] = jnp.clip(images, 0.0, 1.0)
            out["variables"] = _variables(state)
        return out

    state, outputs = run(
        arch, params, ref, starts, settings=settings, distance=distance, w_avg=w_avg,
        w_std=w_std, outputs=history,
    )  # fmt: skip
    return dict(_final(program, params, state, ref), **outputs)


def _step_key(draws: jax.Array, k: jax.Array) -> jax.Array:
    return jax.random.fold_in(jax.random.wrap_key_data(draws), k)


def _variables(state: ProjectorState) -> dict:
    return {"latent": state.w[:, None, :], "noise": state.noise}


def _final(program, params: dict, state: ProjectorState, ref: jax.Array) -> dict:
    images = render(program.arch, params, state.w, state.noise)
    gen_lr = program.downscale(images)
    l2 = losses.l2_error(gen_lr, ref)
    failed = ~jnp.isfinite(l2)
    return {
        "hr": jnp.clip(images, 0.0, 1.0),
        "lr": jnp.clip(gen_lr, 0.0, 1.0),
        "l2": l2,
        "success": ~failed & (l2 <= program.eps),
        "failed": failed,
        "best_step": jnp.full(l2.shape, program.options.steps, jnp.int32),
        "final": _variables(state),
    }
