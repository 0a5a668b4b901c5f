"""PULSE's latent search (docs/method.md sections 2-7), the algorithm alone: the static
`Program`, the state, one `step`, the whole loop over some rows (`run_rows`).

The search is pure functions over one typed state, `SearchState`: the trainable
variables (the start's leaves the generator marks trainable; `None` where a leaf is
fixed), the fixed ones (the complement), the optimizer state, the radii, the best-so-far
bookkeeping, the generator's prepared parameters and the targets. The static part, a
`Program` (the generator's arch, the options, the degradation), is a static field of the
state, so the state is an ordinary pytree for `jax.jit`, `lax.scan` and `device_get`.

Every sample of every image is a row of one leading axis N = images x samples; the loss
is a sum of per-sample terms, the optimizers are elementwise and the sphere projection
is per row, so no sample ever influences another (docs/method.md section 10).

A notebook steps a search by hand (`init` and `finalize` are solve.py's: they check the
inputs and shape the result):

    state = pulse_jax.init(lr_images, generator, SearchOptions(steps=50), num_samples=2)
    outputs = []
    for _ in range(50):
        state, out = pulse_jax.step(state)   # out["history"]["L2"]: [N] before the step
        outputs.append(out)
    result = pulse_jax.finalize(state, outputs)   # a SolveResult

`pulse_jax.solve` runs the same functions as one compiled `lax.scan` (solve.py); what it
checks and returns is problem.py's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pulse_jax import ilo, losses, optim, projector, sphere
from pulse_jax.generators.base import Arch, Generator
from pulse_jax.options import ConfigError, OperatorName, SearchMode, SearchOptions

Downscale = Callable[[jax.Array], jax.Array]


def static_field(**kwargs: Any) -> Any:
    """A dataclass field that is part of the pytree's structure, not a leaf."""
    return dataclasses.field(metadata=dict(static=True), **kwargs)


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
    options: SearchOptions,
    *,
    downscale: Downscale | None = None,
    keep_intermediate: bool = False,
    remat: bool = False,
    progress_every: int = 0,
) -> Program:
    """The program for `lr_size` px inputs.

    Args:
      generator: the generator searched.
      lr_size: side of the observations.
      options: the search options; the generator's defaults are filled in
        (`SearchOptions.for_arch`) and the operator of `options.operator` is built for this
        size, with its success threshold (`operators.Degradation.success_eps`).
      downscale: instead of the operator, any differentiable degradation
        [N, R, R, 3] -> [N, h, w, 3], with `options.eps` as the threshold (the operator
        must then be left at its default).
      keep_intermediate, remat, progress_every: `Program`'s.

    Raises:
      ConfigError: a value that cannot work (naming the option).
    """
    resolved = options.for_arch(generator.arch)
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
      loss_params: what loss terms need besides the images, by term: {"LPIPS":
        `lpips.LPIPSWeights`}; None when no term needs anything (docs/lpips.md).
    """

    program: Program = static_field()
    num_samples: int = static_field()
    params: Any = None
    loss_params: Any = None
    ref: jax.Array = None
    trainable: Any = None
    fixed: Any = None
    opt_state: Any = None
    radii: Any = None
    best: Best = None
    failed: jax.Array = None
    count: jax.Array = None


def start_state(
    program: Program, params, ref, start, num_samples: int = 1, loss_params: Any = None
) -> SearchState:
    """The state before the first step, for ref [N, h, w, 3] and a start (leaves [N, ...]);
    params as `arch.prepare` returns them; loss_params as `SearchState` holds them.
    Traceable."""
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
        loss_params=loss_params,
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
    perceptual = None
    if "LPIPS" in program.term_names:
        weights = state.loss_params["LPIPS"]
        perceptual = losses.lpips_term(weights, program.downscale, images, gen_lr, state.ref)
    terms = losses.loss_terms(
        gen_lr,
        state.ref,
        dlatents,
        eps=program.eps,
        names=program.term_names,
        tiled=program.options.tile_latent,
        lpips=perceptual,
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


def run_rows(
    program: Program, params, ref, start, num_samples: int = 1, loss_params: Any = None
) -> dict:
    """The whole search of some rows: `start_state`, a `lax.scan` of the steps and
    `final_rows`, with the step outputs stacked [steps, N, ...]. Traceable; params as
    `arch.prepare` returns them."""
    if program.options.mode == SearchMode.PROJECTOR:
        return projector.mode_rows(program, params, ref, start, loss_params)
    if program.options.mode == SearchMode.ILO:
        return ilo.run_rows(program, params, ref, start)
    state = start_state(program, params, ref, start, num_samples, loss_params)

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
