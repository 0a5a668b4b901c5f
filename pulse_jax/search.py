"""PULSE's latent search (docs/method.md sections 2-7), optax-style: `init`, `step`, `finalize`.

The search is pure functions over one typed state, `SearchState`: the trainable
variables (the start's leaves the generator marks trainable; `None` where a leaf is
fixed), the fixed ones (the complement), the optimizer state, the radii, the best-so-far
bookkeeping, the generator's prepared parameters and the targets. The static part, a
`Program` (the generator's arch, the options, the degradation), is a static field of the
state, so the state is an ordinary pytree for `jax.jit`, `lax.scan` and `device_get`.

Every sample of every image is a row of one leading axis N = images x samples; the loss
is a sum of per-sample terms, the optimizers are elementwise and the sphere projection
is per row, so no sample ever influences another (docs/method.md section 10).

A notebook steps a search by hand:

    state = pulse_jax.init(lr_images, generator, steps=50, num_samples=2)
    outputs = []
    for _ in range(50):
        state, out = pulse_jax.step(state)   # out["history"]["L2"]: [N] before the step
        outputs.append(out)
    result = pulse_jax.finalize(state, outputs)   # a SolveResult

`pulse_jax.solve` runs the same functions as one compiled `lax.scan` (solve.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pulse_jax import ilo, losses, optim, sphere
from pulse_jax.generators.base import Arch, Generator
from pulse_jax.options import ConfigError, OperatorName, SearchMode, SearchOptions, with_options

Downscale = Callable[[jax.Array], jax.Array]


def _static(**kwargs: Any) -> Any:
    """A dataclass field that is part of the pytree's structure, not a leaf."""
    return dataclasses.field(metadata=dict(static=True), **kwargs)


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


@dataclasses.dataclass(frozen=True)
class SearchProgress:
    """What `solve(progress=fn)` hands `fn` during a search.

    Attributes:
      step: steps done by the group of rows running now (1..steps).
      steps: the search's steps.
      group, groups: the group running now (0-based) and how many run one after the other
        (`batch_per_device`; 1 unless the rows are more than the devices take at once).
      l2: every sample's best (lowest total loss) L2 so far, [B, S]; inf for the samples of
        groups not started.
      success: that L2 is <= eps and the loss never turned NaN, [B, S].
    """

    step: int
    steps: int
    group: int
    groups: int
    l2: np.ndarray
    success: np.ndarray

    @property
    def fraction(self) -> float:
        """The share of the search's steps done, over all groups."""
        return (self.group * self.steps + self.step) / (self.groups * self.steps)

    @property
    def best_l2(self) -> float:
        """The lowest L2 of any sample so far."""
        return float(np.min(self.l2))

    @property
    def below_eps(self) -> int:
        """How many samples reached eps so far."""
        return int(np.sum(self.success))


@dataclasses.dataclass(frozen=True)
class Program:
    """Everything static about one search (hashable): equal programs share a compilation.

    Attributes:
      arch: the generator's static structure.
      options: the search options, resolved for `arch` (`SearchOptions.for_arch`).
      downscale: the degradation [N, R, R, 3] -> [N, h, w, 3] the loss compares through.
      eps: the success threshold on the unclamped L2 (the operator's, for `options.eps`).
      keep_intermediate: each step also outputs its image and variables.
      remat: rematerialize the generator's activations in the backward pass
        (`jax.checkpoint`, saving only conv and matmul outputs): larger batches fit, the
        result is the same up to rounding (the recomputed layers may fuse differently).
      progress_every: > 0: the step loop hands the rows' best L2 so far to the host every
        that many steps and after the last (`report_progress`); 0: no host callback in
        the program. Results do not depend on it (tests/test_progress.py).
      rows_one_at_a_time: each step runs the generator's forward and backward pass for
        one row after the other (`lax.map`) instead of for all rows at once: the same
        result up to rounding, the working set of one row. `solve` sets it where that is
        faster (`solve.rows_one_at_a_time`: on CPU, for 1024 px generators;
        docs/batch_curve_cpu.md).
    """

    arch: Arch
    options: SearchOptions
    downscale: Downscale
    eps: float
    keep_intermediate: bool = False
    remat: bool = False
    progress_every: int = 0
    rows_one_at_a_time: bool = False

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(["L2"] + [name for _, name in self.options.loss]))

    def optimizer(self) -> optax.GradientTransformation:
        o = self.options
        return optim.make_optimizer(o.opt_name, o.learning_rate, o.lr_schedule, o.steps)

    def partition(self) -> tuple[Any, Any]:
        """(trainable mask, sphere axes of the trainable leaves, None elsewhere): trees
        shaped like a start (`arch.trainable`, `arch.sphere_axes`)."""
        mask = self.arch.trainable(self.options)
        axes = self.arch.sphere_axes(self.options)
        return mask, jax.tree.map(lambda m, a: a if m else None, mask, axes)


def make_program(
    generator: Generator,
    lr_size: int,
    options: dict,
    *,
    downscale: Downscale | None = None,
    keep_intermediate: bool = False,
    remat: bool = False,
    progress_every: int = 0,
) -> Program:
    """The program for `lr_size` px inputs; `options` are `SearchOptions` keywords.

    Raises:
      TypeError: an option name that does not exist.
      ConfigError: a value that cannot work (naming the option).
    """
    resolved = SearchOptions(**options).for_arch(generator.arch)
    if downscale is None:
        downscale = resolved.degradation(lr_size, generator.resolution)
        eps = downscale.success_eps(resolved.eps)
    elif resolved.operator != OperatorName.BICUBIC:
        raise ConfigError("give downscale or operator, not both")
    else:
        eps = resolved.eps
    if progress_every < 0:
        raise ValueError(f"progress_every must be >= 0, got {progress_every}")
    return Program(
        generator.arch,
        resolved,
        downscale,
        eps,
        bool(keep_intermediate),
        bool(remat),
        int(progress_every),
    )


def split(mask: Any, tree: Any) -> tuple[Any, Any]:
    """A start -> (its trainable leaves, its fixed leaves), each with None at the other's."""
    trainable = jax.tree.map(lambda m, x: x if m else None, mask, tree)
    fixed = jax.tree.map(lambda m, x: None if m else x, mask, tree)
    return trainable, fixed


def merge(trainable: Any, fixed: Any) -> Any:
    """The inverse of `split`."""
    return jax.tree.map(
        lambda t, f: f if t is None else t, trainable, fixed, is_leaf=lambda x: x is None
    )


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Best:
    """Each row's best step so far (lowest total loss): [N] or [N, ...] arrays."""

    loss: jax.Array
    hr: jax.Array
    lr: jax.Array
    l2: jax.Array
    step: jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class SearchState:
    """The whole state of a search over N rows (see the module docstring).

    Attributes:
      program: the static program (part of the tree structure, not a leaf).
      num_samples: S, samples per image; rows are image-major (row = b * S + s).
      params: the generator's prepared parameters (`arch.prepare`).
      ref: the targets, [N, h, w, 3].
      trainable: the optimized leaves of the start's tree (None at fixed leaves).
      fixed: the fixed leaves (None at trainable ones).
      opt_state: the optimizer's state over `trainable`.
      radii: each trainable leaf's row radii before the first step (docs/method.md section 3).
      best: the best step so far, per row.
      failed: [N] the row's loss turned NaN (its variables stop changing).
      count: the number of steps taken.
    """

    program: Program = _static()
    num_samples: int = _static()
    params: Any = None
    ref: jax.Array = None
    trainable: Any = None
    fixed: Any = None
    opt_state: Any = None
    radii: Any = None
    best: Best = None
    failed: jax.Array = None
    count: jax.Array = None


def start_state(program: Program, params, ref, start, num_samples: int = 1) -> SearchState:
    """The state before the first step, for ref [N, h, w, 3] and a start (leaves [N, ...]);
    params as `arch.prepare` returns them. Traceable."""
    mask, axes = program.partition()
    trainable, fixed = split(mask, start)
    n, r, h = ref.shape[0], program.arch.resolution, ref.shape[1]
    best = Best(
        loss=jnp.full((n,), jnp.inf),
        hr=jnp.zeros((n, r, r, 3)),
        lr=jnp.zeros((n, h, h, 3)),
        l2=jnp.full((n,), jnp.inf),
        step=jnp.zeros((n,), jnp.int32),
    )
    return SearchState(
        program=program,
        num_samples=num_samples,
        params=params,
        ref=ref,
        trainable=trainable,
        fixed=fixed,
        opt_state=program.optimizer().init(trainable),
        radii=sphere.tree_radii(trainable, axes),
        best=best,
        failed=jnp.zeros((n,), bool),
        count=jnp.zeros((), jnp.int32),
    )


def _render(program: Program, params, fixed, trainable):
    return program.arch.render(params, merge(trainable, fixed), program.options)


def _objective(trainable, state: SearchState):
    """The summed loss of the rows, with the per-row report, images and downscales."""
    program = state.program
    render = functools.partial(_render, program, state.params, state.fixed)
    if program.remat:
        # Keep the conv and matmul outputs, recompute the elementwise layers between them
        # (noise, leaky ReLU, instance norm, modulation) in the backward pass.
        render = jax.checkpoint(render, policy=jax.checkpoint_policies.dots_saveable)
    images, dlatents = render(trainable)
    gen_lr = program.downscale(images)
    terms = losses.loss_terms(
        gen_lr,
        state.ref,
        dlatents,
        eps=program.eps,
        names=program.term_names,
        tiled=program.options.tile_latent,
    )
    total = losses.total_loss(terms, program.options.loss)  # [N]
    report = dict(terms, L2=losses.l2_error(gen_lr, state.ref), TOTAL=total)
    return jnp.sum(total), (report, images, gen_lr)


def _gradients(state: SearchState):
    """The gradient of the summed loss and `_objective`'s report, images and downscales:
    of all rows at once, or (`Program.rows_one_at_a_time`) one row after the other
    (`lax.map`), each row's loss being its own (the rows are independent)."""
    grad = jax.grad(_objective, has_aux=True)
    if not state.program.rows_one_at_a_time or state.failed.shape[0] == 1:
        return grad(state.trainable, state)

    def one(rows):
        trainable, fixed, ref = rows
        return grad(trainable, dataclasses.replace(state, fixed=fixed, ref=ref))

    rows = jax.tree.map(lambda x: x[:, None], (state.trainable, state.fixed, state.ref))
    out = jax.lax.map(one, rows)  # leaves [N, 1, ...]
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), out)


def _step(state: SearchState) -> tuple[SearchState, dict]:
    """`step`, traceable (solve's scan body)."""
    program = state.program
    grads, (report, images, gen_lr) = _gradients(state)
    total = report["TOTAL"]
    failed = state.failed | ~jnp.isfinite(total)
    better = ~failed & (total < state.best.loss)
    found = Best(total, images, gen_lr, report["L2"], jnp.broadcast_to(state.count, total.shape))
    best = _where_rows(better, found, state.best)
    updates, opt_state = program.optimizer().update(grads, state.opt_state, state.trainable)
    moved = optax.apply_updates(state.trainable, updates)
    moved = sphere.tree_project(moved, state.radii, program.partition()[1])
    # A sample whose loss turned NaN keeps its last finite variables (docs/method.md section 7.5).
    moved = _where_rows(failed, state.trainable, moved)
    new_state = dataclasses.replace(
        state,
        trainable=moved,
        opt_state=opt_state,
        best=best,
        failed=failed,
        count=state.count + 1,
    )
    outputs = {"history": report}
    if program.keep_intermediate:
        outputs["intermediate"] = jnp.clip(images, 0.0, 1.0)
        outputs["variables"] = merge(moved, state.fixed)
    return new_state, outputs


def final_rows(state: SearchState) -> dict:
    """The per-row result of a state: {"hr", "lr", "l2", "success", "failed", "best_step",
    "final" (the variables)}. Traceable."""
    best = state.best
    return {
        "hr": jnp.clip(best.hr, 0.0, 1.0),
        "lr": jnp.clip(best.lr, 0.0, 1.0),
        "l2": best.l2,
        "success": ~state.failed & (best.l2 <= state.program.eps),
        "failed": state.failed,
        "best_step": best.step,
        "final": merge(state.trainable, state.fixed),
    }


def _where_rows(rows: jax.Array, if_true, if_false):
    """Per-sample select between two pytrees whose leaves have a leading sample axis."""

    def pick(a, b):
        mask = rows.reshape(rows.shape + (1,) * (jnp.ndim(a) - 1))
        return jnp.where(mask, a, b)

    return jax.tree.map(pick, if_true, if_false)


_step_jit = jax.jit(_step)


def step(state: SearchState) -> tuple[SearchState, dict]:
    """One optimizer step of every row: the loss and its gradient at the current
    variables, the best-so-far update, the optimizer update, the sphere projection.

    Returns:
      (the next state, outputs): outputs["history"] holds each loss term, `L2` (unclamped)
      and `TOTAL` for every row [N], computed before the update; with
      `keep_intermediate`, also "intermediate" (the image [N, R, R, 3]) and "variables"
      (after the update and projection).
    """
    return _step_jit(state)


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


# -- inputs ---------------------------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Problem:
    """A search's inputs: the static program, the generator's (raw) parameters, the targets
    ref [N, h, w, 3] and the start (leaves [N, ...]), or [G, W, ...] for groups of rows."""

    program: Program = _static()
    num_samples: int = _static()
    params: Any = None
    ref: Any = None
    start: Any = None


def run_rows(program: Program, params, ref, start, num_samples: int = 1) -> dict:
    """The whole search of some rows: `start_state`, a `lax.scan` of the steps and
    `final_rows`, with the step outputs stacked [steps, N, ...]. Traceable; params as
    `arch.prepare` returns them."""
    if program.options.mode == SearchMode.ILO:
        return ilo.run_rows(program, params, ref, start)
    state = start_state(program, params, ref, start, num_samples)

    def body(state, _):
        state, outputs = _step(state)
        report_progress(state)
        return state, outputs

    state, outputs = jax.lax.scan(body, state, length=program.options.steps)
    return dict(final_rows(state), **outputs)


# -- progress from inside the compiled loop --------------------------------------------------

# The host's receiver of the step loop's reports (`listening`). The callback compiled into
# a program is this module's `_deliver`, the same function for every program and call, so
# a report reaches whoever listens now and no call retraces.
_LISTENER: list[Callable | None] = [None]


def report_progress(state: SearchState) -> None:
    """In the step loop (traceable): after steps `every`, `2 every`, ... and the last
    (`Program.progress_every`), hands (steps done, each row's best L2 so far, which rows'
    loss turned NaN) to the host (`listening`); nothing on other steps (`lax.cond`).

    `jax.debug.callback` runs on the program's first device with the rows gathered there:
    once per report, on the host (process) of that device."""
    program = state.program
    every = program.progress_every
    if not every:
        return
    due = (state.count % every == 0) | (state.count == program.options.steps)
    jax.lax.cond(
        due,
        lambda *args: jax.debug.callback(_deliver, *args),
        lambda *args: None,
        state.count,
        state.best.l2,
        state.failed,
    )


def _deliver(count, l2, failed) -> None:
    listener = _LISTENER[0]
    if listener is not None:
        listener(int(count), np.asarray(l2), np.asarray(failed))


@contextlib.contextmanager
def listening(receive: Callable[[int, np.ndarray, np.ndarray], None]):
    """Within the block, `receive(steps_done, l2 [W], failed [W])` gets the step loop's
    reports (one group of W rows at a time). One listener at a time per process: a second
    one is refused (ValueError), as is a nested block."""
    if _LISTENER[0] is not None:
        raise ValueError("another search reports its progress in this process")
    _LISTENER[0] = receive
    try:
        yield
    finally:
        _LISTENER[0] = None


@jax.jit
def _init_jit(problem: Problem) -> SearchState:
    params = problem.program.arch.prepare(problem.params)
    return start_state(problem.program, params, problem.ref, problem.start, problem.num_samples)


_final_jit = jax.jit(final_rows)


def inputs(
    lr_images,
    generator: Generator,
    *,
    num_samples: int = 1,
    seed: Any = 0,
    init: dict | None = None,
    downscale: Downscale | None = None,
    image_ids: Any = None,
    sample_ids: Any = None,
    keep_intermediate: bool = False,
    remat: bool = False,
    progress_every: int = 0,
    **options: Any,
) -> tuple[Problem, int]:
    """`solve`'s arguments (but devices and batch_per_device) checked and made into a
    `Problem`; also returns B, the number of images."""
    lr_images = _check_images(lr_images, generator.resolution)
    batch, size = lr_images.shape[0], lr_images.shape[1]
    program = make_program(
        generator,
        size,
        options,
        downscale=downscale,
        keep_intermediate=keep_intermediate,
        remat=remat,
        progress_every=progress_every,
    )
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
    return Problem(program, int(num_samples), generator.params, ref, start), batch


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


# -- the public face ---------------------------------------------------------------------


@with_options(inputs)
def init(lr_images, generator: Generator, **kwargs: Any) -> SearchState:
    """The state of a search before its first step, on the default device.

    Args:
      lr_images, generator: as for `solve`.
      **kwargs: `solve`'s keywords but `devices` and `batch_per_device` (the search
        options, `num_samples`, `seed`, `init`, `image_ids`, `sample_ids`, `downscale`,
        `keep_intermediate`, `remat`).
    """
    problem, _ = inputs(lr_images, generator, **kwargs)
    if problem.program.options.mode == SearchMode.ILO:
        raise ConfigError("init and step run PULSE's search; mode ilo runs through solve")
    return _init_jit(problem)


def finalize(state: SearchState, outputs: Sequence[dict] = ()) -> SolveResult:
    """The `SolveResult` of a state, with the history (and, with `keep_intermediate`, the
    images and variables) of the `step` outputs given, in order."""
    rows = jax.device_get(_final_jit(state))
    stacked = jax.tree.map(lambda *xs: np.stack(xs), *outputs) if outputs else {}
    rows.update(
        history=stacked.get("history", {}),
        **{k: stacked.get(k) for k in ("intermediate", "variables")},
    )
    n = state.failed.shape[0]
    return to_result(rows, n // state.num_samples, state.num_samples, len(outputs))
