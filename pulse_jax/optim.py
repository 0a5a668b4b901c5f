"""Optimizers and learning-rate schedules with torch.optim semantics (docs/method.md section 7).

The reference steps ``torch.optim`` optimizers under a ``LambdaLR`` schedule,
and the golden runs compare trajectories step by step, so the updates here are
written as optax ``GradientTransformation``s that follow torch's CPU
single-tensor algorithms operation for operation rather than optax's own
``adam``/``adamax`` (which place eps and the bias corrections differently).

Torch computes the per-step scalars (the scheduled learning rate, Adam's bias
corrections and step size) in Python float64 and rounds each once to float32
when it meets a tensor. In float32 those scalars would be visibly off in the
first steps (``1 - 0.999 ** 1`` is 1.3e-5 relative off), so
``make_optimizer`` precomputes them in float64 for each of its ``steps``
updates and the traced update looks them up by step count.

Every update is elementwise, so the samples of a batch optimise
independently of each other.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from pulse_jax.options import LRSchedule, OptName, choose

SCHEDULES = tuple(s.value for s in LRSchedule)
OPTIMIZERS = tuple(o.value for o in OptName)

# torch.optim defaults, as PULSE passes only the learning rate (and SGD's momentum).
_BETA1 = 0.9
_BETA2 = 0.999
_EPS = 1e-8
_MOMENTUM = 0.9

# The float32 values torch's kernels see for the Python-float hyperparameters.
_F32_BETA2 = np.float32(_BETA2)
_F32_ONE_MINUS_BETA1 = np.float32(1 - _BETA1)  # the lerp weight
_F32_ONE_MINUS_BETA2 = np.float32(1 - _BETA2)
_F32_EPS = np.float32(_EPS)
_F32_MOMENTUM = np.float32(_MOMENTUM)


def lr_factor(schedule: str, step: Any, steps: int) -> Any:
    """The learning-rate multiplier of update ``step`` (0-based), docs/method.md section 7.2.

    Written exactly as the reference's ``LambdaLR`` lambdas (same operation
    order), for ``n = steps``:

    - ``fixed``: 1;
    - ``linear1cycle``: ``(9 * (1 - |j/n - 1/2| * 2) + 1) / 10``, a triangle
      from 0.1 up to 1 at mid-run and back;
    - ``linear1cycledrop``: the same triangle over the first ``0.9 n`` steps,
      then a linear drop from 0.1 towards 0.001.

    Args:
      schedule: one of ``SCHEDULES``.
      step: the 0-based update index: a Python or numpy number or array
        (computed in float64, as the reference's Python does) or a jax array,
        possibly traced (computed in float32).
      steps: the total number of updates ``n``.

    Returns:
      The factor, shaped like ``step``.

    Raises:
      ValueError: for an unknown schedule.
    """
    schedule = choose(LRSchedule, schedule, "lr_schedule")
    if isinstance(step, jax.Array):
        xp, j = jnp, jnp.asarray(step, jnp.float32)
    else:
        xp, j = np, np.asarray(step, np.float64)
    if schedule == "fixed":
        return xp.ones_like(j)
    if schedule == "linear1cycle":
        return (9 * (1 - xp.abs(j / steps - 1 / 2) * 2) + 1) / 10
    cut = 0.9 * steps
    rise_and_fall = (9 * (1 - xp.abs(j / cut - 1 / 2) * 2) + 1) / 10
    drop = 1 / 10 + (j - cut) / (0.1 * steps) * (1 / 1000 - 1 / 10)
    return xp.where(j < cut, rise_and_fall, drop)


class TorchOptimizerState(NamedTuple):
    """State of the torch-style optimizers.

    Attributes:
      count: int32 scalar, the number of updates applied so far.
      moments: per-optimizer tuple of pytrees shaped like the parameters:
        () for sgd, (momentum buffer,) for sgdm, (exp_avg, exp_avg_sq) for
        adam, (exp_avg, exp_inf) for adamax.
    """

    count: jax.Array
    moments: tuple


def _lerp(start: jax.Array, end: jax.Array, weight: np.float32) -> jax.Array:
    """torch.lerp for a weight below 0.5, the branch Adam's ``1 - beta1`` takes."""
    return start + weight * (end - start)


def _sgd(grads, moments, coeff):
    (neg_lr,) = coeff
    return jax.tree.map(lambda g: neg_lr * g, grads), ()


def _sgdm(grads, moments, coeff):
    (neg_lr,) = coeff
    # torch starts the buffer at the raw gradient; with a zero-initialised
    # buffer 0.9 * 0 + g is exactly g, so one formula covers every step.
    buf = jax.tree.map(lambda b, g: b * _F32_MOMENTUM + g, moments[0], grads)
    return jax.tree.map(lambda b: neg_lr * b, buf), (buf,)


def _adam(grads, moments, coeff):
    neg_step_size, bias_correction2_sqrt = coeff
    exp_avg = jax.tree.map(lambda m, g: _lerp(m, g, _F32_ONE_MINUS_BETA1), moments[0], grads)
    # exp_avg_sq.mul_(beta2).addcmul_(g, g, value=1 - beta2)
    exp_avg_sq = jax.tree.map(
        lambda v, g: v * _F32_BETA2 + (_F32_ONE_MINUS_BETA2 * g) * g, moments[1], grads
    )

    def update(m, v):
        denom = jnp.sqrt(v) / bias_correction2_sqrt + _F32_EPS
        return (neg_step_size * m) / denom  # addcdiv: value * t1 / t2

    return jax.tree.map(update, exp_avg, exp_avg_sq), (exp_avg, exp_avg_sq)


def _adamax(grads, moments, coeff):
    (neg_clr,) = coeff
    exp_avg = jax.tree.map(lambda m, g: _lerp(m, g, _F32_ONE_MINUS_BETA1), moments[0], grads)
    exp_inf = jax.tree.map(
        lambda u, g: jnp.maximum(u * _F32_BETA2, jnp.abs(g) + _F32_EPS), moments[1], grads
    )
    updates = jax.tree.map(lambda m, u: (neg_clr * m) / u, exp_avg, exp_inf)
    return updates, (exp_avg, exp_inf)


def _coefficients(opt_name: str, lrs: list[float]) -> list[list[float]]:
    """Per-step scalars in float64, as torch's Python computes them; [n_coeff][steps]."""
    if opt_name in ("sgd", "sgdm"):
        return [[-lr for lr in lrs]]
    # torch's bias corrections use the 1-based step count t = j + 1.
    bias_correction1 = [1 - _BETA1 ** float(j + 1) for j in range(len(lrs))]
    neg_step_size = [-(lr / bc1) for lr, bc1 in zip(lrs, bias_correction1, strict=True)]
    if opt_name == "adamax":
        return [neg_step_size]
    bias_correction2_sqrt = [(1 - _BETA2 ** float(j + 1)) ** 0.5 for j in range(len(lrs))]
    return [neg_step_size, bias_correction2_sqrt]


_UPDATES: dict[str, tuple[int, Callable]] = {
    # name: (number of moment trees, update rule)
    "sgd": (0, _sgd),
    "sgdm": (1, _sgdm),
    "adam": (2, _adam),
    "adamax": (2, _adamax),
}


def make_optimizer(
    opt_name: str, learning_rate: float, lr_schedule: str, steps: int
) -> optax.GradientTransformation:
    """A torch.optim-equivalent optimizer for a run of ``steps`` updates.

    Update ``j`` (0-based) uses the learning rate
    ``learning_rate * lr_factor(lr_schedule, j, steps)``, as the reference's
    ``LambdaLR`` stepped after every update gives. The optimizer is built for
    exactly ``steps`` updates: any later update reuses the last step's scalars.

    - ``sgd``: ``p -= lr * g``.
    - ``sgdm``: momentum 0.9, no dampening; ``buf = g`` on the first step,
      ``buf = 0.9 * buf + g`` after; ``p -= lr * buf``.
    - ``adam``: betas (0.9, 0.999), eps 1e-8, torch's single-tensor algorithm:
      ``m = lerp(m, g, 0.1)``, ``v = 0.999 v + 0.001 g^2``,
      ``p -= lr / (1 - 0.9^t) * m / (sqrt(v) / sqrt(1 - 0.999^t) + eps)``.
    - ``adamax``: ``m = lerp(m, g, 0.1)``, ``u = max(0.999 u, |g| + eps)``,
      ``p -= lr / (1 - 0.9^t) * m / u``.

    Args:
      opt_name: one of ``OPTIMIZERS``.
      learning_rate: the base learning rate (the reference's default is 0.4).
      lr_schedule: one of ``SCHEDULES``.
      steps: the number of updates of the run (the schedule's length).

    Returns:
      An optax ``GradientTransformation`` whose updates are added to the
      parameters with ``optax.apply_updates``; its state is a
      ``TorchOptimizerState``.

    Raises:
      ValueError: for an unknown optimizer or schedule, or ``steps < 1``.
    """
    opt_name = choose(OptName, opt_name, "opt_name")
    lr_schedule = choose(LRSchedule, lr_schedule, "lr_schedule")
    if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    steps = int(steps)
    lrs = [learning_rate * float(lr_factor(lr_schedule, j, steps)) for j in range(steps)]
    return optimizer_for_rates(opt_name, lrs)


def optimizer_for_rates(opt_name: str, lrs: Any) -> optax.GradientTransformation:
    """`make_optimizer`'s torch.optim-equivalent optimizer, update ``j`` at the learning
    rate ``lrs[j]`` (a float64 sequence, as torch's Python computes it; any later update
    reuses the last one): for schedules other than PULSE's, the projector's and ILO's
    (docs/method.md sections 11 and 12).

    Raises:
      ValueError: for an unknown optimizer or an empty ``lrs``.
    """
    opt_name = choose(OptName, opt_name, "opt_name")
    lrs = [float(lr) for lr in lrs]
    if not lrs:
        raise ValueError("lrs is empty: an optimizer needs the rate of at least one update")
    steps = len(lrs)
    # [n_coeff, steps], each rounded once to float32 as torch's kernels do.
    tables = np.asarray(_coefficients(opt_name, lrs), dtype=np.float32)
    n_moments, rule = _UPDATES[opt_name]

    def init_fn(params: Any) -> TorchOptimizerState:
        moments = tuple(jax.tree.map(jnp.zeros_like, params) for _ in range(n_moments))
        return TorchOptimizerState(count=jnp.zeros([], jnp.int32), moments=moments)

    def update_fn(
        grads: Any, state: TorchOptimizerState, params: Any = None
    ) -> tuple[Any, TorchOptimizerState]:
        del params  # torch's rules here need no parameter values (no weight decay)
        index = jnp.minimum(state.count, steps - 1)
        coeff = tuple(jnp.asarray(row)[index] for row in tables)
        updates, moments = rule(grads, state.moments, coeff)
        return updates, TorchOptimizerState(count=state.count + 1, moments=moments)

    return optax.GradientTransformation(init_fn, update_fn)
