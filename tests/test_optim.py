"""Tests for pulse_jax.optim: schedules, torch.optim optimizers (docs/method.md section 7).

The optimizers are compared with small numpy transcriptions of torch's CPU
single-tensor algorithms (torch/optim/{sgd,adam,adamax}.py, torch 2.13). Those
transcriptions were checked once, offline, against torch.optim itself on a toy
problem: fed torch's own iterates they give the same next iterate up to one
rounding (``add_(alpha=)``, ``lerp_`` and ``addcmul_`` are fused multiply-adds
in torch's vectorised CPU kernels), and over 5 free-running steps they stay
within 2e-6 max-abs of torch. torch is not a dependency of the project.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from pulse_jax.optim import OPTIMIZERS, SCHEDULES, lr_factor, make_optimizer

f32 = np.float32


@pytest.mark.parametrize(
    "schedule, step, expected",
    [
        ("fixed", 0, 1.0),
        ("fixed", 99, 1.0),
        ("linear1cycle", 0, 0.1),
        ("linear1cycle", 25, 0.55),
        ("linear1cycle", 50, 1.0),
        ("linear1cycle", 75, 0.55),
        ("linear1cycle", 99, 0.118),
        ("linear1cycledrop", 0, 0.1),
        ("linear1cycledrop", 45, 1.0),
        ("linear1cycledrop", 89, 0.12),
        ("linear1cycledrop", 90, 0.1),
        ("linear1cycledrop", 95, 0.0505),
        ("linear1cycledrop", 99, 0.0109),
    ],
)
def test_schedule_values(schedule, step, expected):
    # Hand-computed from the formulas of docs/method.md section 7.2 with n = 100 steps.
    np.testing.assert_allclose(lr_factor(schedule, step, 100), expected, rtol=1e-12)
    traced = jax.jit(lambda j: lr_factor(schedule, j, 100))(jnp.int32(step))
    np.testing.assert_allclose(float(traced), expected, rtol=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedule_vectorised(schedule):
    steps = np.arange(20)
    expected = [float(lr_factor(schedule, int(j), 20)) for j in steps]
    np.testing.assert_allclose(lr_factor(schedule, steps, 20), expected, rtol=1e-12)
    np.testing.assert_allclose(lr_factor(schedule, jnp.asarray(steps), 20), expected, rtol=1e-6)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_update_j_uses_factor_j(schedule):
    # SGD with a unit gradient moves the parameter by exactly -lr_j at update j.
    steps = 10
    opt = make_optimizer("sgd", 0.4, schedule, steps)
    state = opt.init(jnp.zeros(()))
    update = jax.jit(opt.update)
    for j in range(steps):
        delta, state = update(jnp.ones(()), state)
        expected = f32(0.4 * float(lr_factor(schedule, j, steps)))
        assert float(delta) == -expected


def _torch_lrs(schedule: str, steps: int) -> list[float]:
    """LambdaLR's learning rates, in Python floats as torch computes them."""
    return [0.4 * float(lr_factor(schedule, j, steps)) for j in range(steps)]


def _numpy_torch(opt_name: str, grad_fn, x0: np.ndarray, lrs: list[float]) -> list[np.ndarray]:
    """torch.optim's single-tensor update rules, transcribed to float32 numpy."""
    p = x0.copy()
    m = np.zeros_like(p)  # exp_avg or momentum buffer
    v = np.zeros_like(p)  # exp_avg_sq or exp_inf
    trajectory = []
    for j, lr in enumerate(lrs):
        g = grad_fn(p)
        t = j + 1
        if opt_name == "sgd":
            p = p + f32(-lr) * g
        elif opt_name == "sgdm":
            m = g.copy() if j == 0 else m * f32(0.9) + g
            p = p + f32(-lr) * m
        elif opt_name == "adam":
            m = m + f32(1 - 0.9) * (g - m)  # lerp_(g, 1 - beta1)
            v = v * f32(0.999) + (f32(1 - 0.999) * g) * g  # mul_(b2).addcmul_(g, g, 1 - b2)
            step_size = lr / (1 - 0.9**t)
            denom = np.sqrt(v) / f32((1 - 0.999**t) ** 0.5) + f32(1e-8)
            p = p + (f32(-step_size) * m) / denom  # addcdiv_(m, denom, -step_size)
        elif opt_name == "adamax":
            m = m + f32(1 - 0.9) * (g - m)
            v = np.maximum(v * f32(0.999), np.abs(g) + f32(1e-8))
            clr = lr / (1 - 0.9**t)
            p = p + (f32(-clr) * m) / v
        trajectory.append(p)
    return trajectory


def _toy_problem():
    rng = np.random.default_rng(0)
    x0 = (2 * rng.standard_normal((3, 4, 5))).astype(f32)
    target = rng.standard_normal((3, 4, 5)).astype(f32)
    scale = rng.uniform(0.1, 3.0, (3, 4, 5)).astype(f32)

    def grad_np(p):  # of sum(scale * (p - target)^2)
        return (f32(2) * scale) * (p - target)

    def grad_jax(p):
        return jax.grad(lambda q: jnp.sum(scale * (q - target) ** 2))(p)

    return x0, grad_np, grad_jax


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("opt_name", OPTIMIZERS)
def test_matches_torch_formulas(opt_name, schedule):
    steps = 5
    x0, grad_np, grad_jax = _toy_problem()
    expected = _numpy_torch(opt_name, grad_np, x0, _torch_lrs(schedule, steps))

    opt = make_optimizer(opt_name, 0.4, schedule, steps)

    @jax.jit
    def step(p, state):
        updates, state = opt.update(grad_jax(p), state, p)
        return optax.apply_updates(p, updates), state

    p, state = jnp.asarray(x0), opt.init(jnp.asarray(x0))
    for j in range(steps):
        p, state = step(p, state)
        # Reached on CPU: 0 for sgd, sgdm, adamax; 1.2e-7 max-abs for adam (XLA
        # may fuse or reorder the elementwise arithmetic differently from numpy).
        np.testing.assert_allclose(np.asarray(p), expected[j], rtol=2e-6, atol=1e-6)
    assert int(state.count) == steps


@pytest.mark.parametrize("opt_name", OPTIMIZERS)
def test_samples_are_independent(opt_name):
    steps = 4
    rng = np.random.default_rng(1)
    x0, target, scale = (rng.standard_normal((3, 4, 5)).astype(f32) for _ in range(3))
    opt = make_optimizer(opt_name, 0.4, "linear1cycledrop", steps)

    @jax.jit
    def run(params, target, scale):
        def loss(q):  # a sum of per-sample losses, as in PULSE
            return jnp.sum(scale * (q - target) ** 2 + 0.1 * q**4)

        state = opt.init(params)
        for _ in range(steps):
            updates, state = opt.update(jax.grad(loss)(params), state, params)
            params = optax.apply_updates(params, updates)
        return params

    batch = run(x0, target, scale)
    for n in range(3):
        one = slice(n, n + 1)
        alone = run(x0[one], target[one], scale[one])
        np.testing.assert_array_equal(np.asarray(alone[0]), np.asarray(batch[n]))


def test_pytree_params():
    opt = make_optimizer("adam", 0.4, "fixed", 3)
    params = {"latent": jnp.ones((2, 3)), "noise": (jnp.zeros((2, 4, 4, 1)),)}
    state = opt.init(params)
    updates, state = jax.jit(opt.update)(jax.tree.map(jnp.ones_like, params), state)
    assert jax.tree.structure(updates) == jax.tree.structure(params)
    # Adam's first step is -lr * sign(g) up to eps.
    np.testing.assert_allclose(np.asarray(updates["latent"]), -0.4, rtol=1e-6)


def test_unknown_names():
    with pytest.raises(ValueError, match="valid choices.*adamax"):
        make_optimizer("rmsprop", 0.4, "fixed", 10)
    with pytest.raises(ValueError, match="valid choices.*linear1cycledrop"):
        make_optimizer("adam", 0.4, "cosine", 10)
    with pytest.raises(ValueError, match="valid choices"):
        lr_factor("cosine", 0, 10)
    with pytest.raises(ValueError, match="positive integer"):
        make_optimizer("adam", 0.4, "fixed", 0)
