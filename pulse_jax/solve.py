"""`solve`: PULSE's latent search (PULSE_SPEC sections 2-6) as one compiled program.

Every sample of every image is optimized at once. Samples are rows of one
leading axis N = images x samples; the loss is a sum of per-sample terms, the
optimizers are elementwise and the sphere projection is per row, so no sample
ever influences another (unlike the reference, success, the best image and NaN
handling are decided per sample; spec section 8).

The solver state is one pytree carried through `lax.scan` under `jax.jit`:
trainable variables, fixed variables, optimizer state, radii and the best-so-far
bookkeeping. The architecture and options are static; the generator's
parameters, the targets and the starting point are traced arguments, so a
second call with the same shapes and options does not recompile. Before the
loop the generator's weights are prepared once (`arch.prepare`, where the
generator has one: scaled, transposed and sub-pixel kernels), so a step runs
the layers and nothing that depends on the weights alone.

Devices: the sample axis is sharded over the devices `solve` is given (a 1-D
`Mesh` named "samples"; rows split with `NamedSharding(mesh, P("samples"))`,
parameters replicated with `P()`), on one host or, after
`jax.distributed.initialize`, across hosts. Each device optimizes
`batch_per_device` rows at a time; N is padded to a multiple of devices x
batch_per_device with copies of the last row, which are dropped from the
result. With `batch_per_device` fixed every device runs the same program on
the same shapes, so a sample's result does not depend on the device count
(bitwise, tests/test_sharding.py). It may depend, at the rounding level, on its
position in its group and so on the other samples: XLA:CPU rounds a row by its
position on some machines (AMD EPYC, 1e-5 after 3 steps) and not on others
(AVX-512 Xeon); launchers therefore form groups from the fixed work list
(`sweep.work_groups`). Left to its default (all rows at once) the per-device batch follows N and the
device count, and compilers may round differently for other batch sizes; Adam's
normalised steps then grow rounding-level differences into visible ones.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pulse_jax import losses, optim, sphere
from pulse_jax.downscale import make_bicubic
from pulse_jax.generators.base import Generator, SearchOptions

Downscale = Callable[[jax.Array], jax.Array]


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
class _Program:
    """Everything static about one compiled search."""

    arch: Any
    options: SearchOptions
    loss: tuple[tuple[float, str], ...]
    eps: float
    opt_name: str
    learning_rate: float
    lr_schedule: str
    steps: int
    downscale: Downscale
    keep_intermediate: bool
    remat: bool = False

    @property
    def term_names(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(["L2"] + [name for _, name in self.loss]))

    def optimizer(self) -> optax.GradientTransformation:
        return optim.make_optimizer(self.opt_name, self.learning_rate, self.lr_schedule, self.steps)


def solve(
    lr_images,
    generator: Generator,
    *,
    num_samples: int = 1,
    seed: int = 0,
    steps: int = 100,
    loss_str: str = "100*L2+0.05*GEOCROSS",
    eps: float = 2e-3,
    noise_type: str = "trainable",
    num_trainable_noise_layers: int = 5,
    tile_latent: bool = False,
    bad_noise_layers=None,
    opt_name: str = "adam",
    learning_rate: float = 0.4,
    lr_schedule: str = "linear1cycledrop",
    init: dict | None = None,
    downscale: Downscale | None = None,
    image_ids=None,
    keep_intermediate: bool = False,
    sample_ids=None,
    devices=None,
    batch_per_device: int | None = None,
    remat: bool = False,
) -> SolveResult:
    """Searches the generator's latent space for images that downscale to `lr_images`.

    Option names and defaults are PULSE's own.

    Args:
      lr_images: float32 [B, h, w, 3] in [0, 1], square, h dividing the generator's resolution.
      generator: from `pulse_jax.load_generator`.
      num_samples: S samples per image, each from its own start.
      seed: sample (b, s) starts from
        `fold_in(fold_in(key(seed[b]), image_ids[b]), sample_ids[b, s])`, so a start
        depends only on the seed, the image's id and the sample index. An int (every
        image) or [B] non-negative ints below 2**32 (one seed per image).
      steps: optimizer steps.
      loss_str: '+'-separated `weight*TERM`, TERM in L2, L1, GEOCROSS.
      eps: success threshold on the unclamped L2, and the clamp of L2/L1.
      noise_type: "zero", "fixed" or "trainable" (StyleGAN).
      num_trainable_noise_layers: noise layers 0..n-1 are optimized (StyleGAN, trainable).
      tile_latent: one latent row repeated over every style layer (StyleGAN).
      bad_noise_layers: noise layers that are always zero (StyleGAN); ints or PULSE's
        '.'-separated string. Default (None): the generator's own
        (`arch.default_bad_noise_layers`: PULSE's 17 for a 1024 px StyleGAN, none for
        StyleGAN2). A layer the generator does not have is an error naming the range.
      opt_name: "adam", "sgd", "sgdm" or "adamax" (PyTorch semantics).
      learning_rate: base learning rate.
      lr_schedule: "fixed", "linear1cycle" or "linear1cycledrop".
      init: an explicit start, {"latent": [B, S, ...], "noise": L arrays [B, S, r, r, 1]}
        (noise for StyleGAN only), instead of drawing one from `seed`.
      downscale: any differentiable degradation [N, R, R, 3] -> [N, h, w, 3]; default the
        bicubic downscale by R / h.
      image_ids: [B] integer ids of the images for seeding (default 0..B-1); sweeps pass the
        images' global positions so that splitting work does not change any start.
      keep_intermediate: also return the image and the variables of every step.
      sample_ids: [B, S] integer sample indices for seeding (default 0..S-1 for every
        image; S is then `num_samples`); a sweep that resumes passes the indices it still
        needs. Ignored with `init`.
      devices: the devices the sample axis is sharded over; default all of `jax.devices()`
        (after `jax.distributed.initialize`, every device of every host: then every
        process must make the same call, and each gets the whole result). A list of one
        device runs the unsharded program on it.
      batch_per_device: how many samples each device optimizes at once (the memory knob);
        the N = B x S samples are padded to a multiple of devices x batch_per_device and
        run in groups of that many, one group after the other. Default: all at once
        (ceil(N / devices) each). A sample's result depends on its seed, image id and
        sample index, and on `batch_per_device` through floating point only: with it
        fixed, results do not change with the device count (bitwise); with the same
        groups (the same rows in the same positions) they are bitwise equal on the same
        machine kind, and otherwise equal up to rounding (tests/test_sharding.py).
      remat: rematerialize the generator's activations in the backward pass
        (`jax.checkpoint`, saving only conv and matmul outputs) so that larger batches fit
        in memory, at the cost of recomputing the cheap elementwise layers. The same
        result up to rounding (the recomputed layers may be fused differently).

    Returns:
      A `SolveResult`.
    """
    lr_images = _check_images(lr_images, generator.resolution)
    batch, size = lr_images.shape[0], lr_images.shape[1]
    program = _make_program(
        generator,
        size,
        steps=steps,
        loss_str=loss_str,
        eps=eps,
        noise_type=noise_type,
        num_trainable_noise_layers=num_trainable_noise_layers,
        tile_latent=tile_latent,
        bad_noise_layers=bad_noise_layers,
        opt_name=opt_name,
        learning_rate=learning_rate,
        lr_schedule=lr_schedule,
        downscale=downscale,
        keep_intermediate=keep_intermediate,
        remat=remat,
    )
    options = program.options
    if init is None and sample_ids is not None:
        samples = _check_ids("sample_ids", sample_ids, None, ndim=2)
        if samples.shape[0] != batch:
            raise ValueError(f"sample_ids must have shape ({batch}, S), got {samples.shape}")
        num_samples = samples.shape[1]
    else:
        samples = np.broadcast_to(np.arange(num_samples), (batch, num_samples))
    _check_program(program, num_samples)
    if batch_per_device is not None and batch_per_device < 1:
        raise ValueError(f"batch_per_device must be >= 1, got {batch_per_device}")
    devices = _device_list(devices)
    if init is None:
        ids = np.arange(batch) if image_ids is None else np.asarray(image_ids)
        if ids.shape != (batch,):
            raise ValueError(f"image_ids must have shape ({batch},), got {ids.shape}")
        seeds = np.asarray(seed)
        seeds = _check_ids(
            "seed", np.full(batch, seeds) if seeds.ndim == 0 else seeds, batch, ndim=1
        )
        start = _sample_starts(
            generator.arch,
            options,
            jnp.asarray(seeds, jnp.uint32),
            jnp.asarray(ids, jnp.uint32),
            jnp.asarray(samples, jnp.uint32),
        )
    else:
        start = _start_from_init(generator, options, init, batch, num_samples)
    ref = jnp.repeat(jnp.asarray(lr_images), num_samples, axis=0)  # [N, h, w, 3]
    out = _run_on(devices, batch_per_device, program, generator.params, ref, start)
    n = batch * num_samples

    def unflat(x):
        return np.asarray(x)[:n].reshape((batch, num_samples) + np.shape(x)[1:])

    def unflat_steps(x):
        return np.asarray(x)[:, :n].reshape((steps, batch, num_samples) + np.shape(x)[2:])

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
        intermediate=unflat_steps(out["intermediate"]) if keep_intermediate else None,
        trajectory=jax.tree.map(unflat_steps, out["trajectory"]) if keep_intermediate else None,
    )


def compiled_memory(
    generator: Generator,
    lr_size: int,
    batch_per_device: int,
    *,
    device: jax.Device | None = None,
    **options,
) -> dict[str, int]:
    """The memory one device needs for `solve(..., batch_per_device=...)`, without running it.

    Compiles the search for one group of `batch_per_device` samples of `lr_size` px inputs
    for `device` and reads XLA's memory analysis of it. This is how to choose
    `batch_per_device`: the largest whose `total_bytes` fits in the device's memory with
    some headroom (`pulse_jax.sweep.plan_batch_size` tries powers of two). Measure on the
    accelerator that will run the search: the CPU compiler's figures differ, and there it
    also undoes `remat` (it merges the recomputation with the forward pass).

    Args:
      generator: from `pulse_jax.load_generator`.
      lr_size: side of the low-resolution inputs.
      batch_per_device: samples per device and group.
      device: where to compile for; default the first local device.
      **options: `solve`'s keyword options that shape the program (`steps`, `loss_str`,
        `eps`, `noise_type`, `num_trainable_noise_layers`, `tile_latent`,
        `bad_noise_layers`, `opt_name`, `learning_rate`, `lr_schedule`, `downscale`,
        `keep_intermediate`, `remat`).

    Returns:
      {"argument_bytes", "output_bytes", "temp_bytes", "total_bytes"} (total = the sum).
    """
    if lr_size < 1 or generator.resolution % lr_size:
        raise ValueError(f"lr_size {lr_size} does not divide {generator.resolution}")
    if batch_per_device < 1:
        raise ValueError(f"batch_per_device must be >= 1, got {batch_per_device}")
    program = _make_program(generator, lr_size, **_program_options(options))
    _check_program(program, 1)
    device = device or jax.local_devices()[0]
    n = int(batch_per_device)
    ids = jax.ShapeDtypeStruct((n,), jnp.uint32)
    start = jax.eval_shape(
        functools.partial(_sample_starts, generator.arch, program.options),
        ids,
        ids,
        jax.ShapeDtypeStruct((n, 1), jnp.uint32),
    )
    ref = jax.ShapeDtypeStruct((n, lr_size, lr_size, 3), jnp.float32)
    placed = functools.partial(
        jax.tree.map,
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(device)
        ),
    )
    params = jax.eval_shape(lambda: generator.params)
    stats = _run.lower(program, placed(params), placed(ref), placed(start))
    stats = stats.compile().memory_analysis()
    out = {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
    }
    out["total_bytes"] = sum(out.values())
    return out


def _program_options(options: dict) -> dict:
    """`solve`'s keyword options that shape the program: `options` over `solve`'s defaults
    (one set of defaults, `solve`'s signature). An unknown name is a TypeError."""
    program_keys = list(inspect.signature(_make_program).parameters)[2:]
    unknown = sorted(set(options) - set(program_keys))
    if unknown:
        raise TypeError(f"unknown solve options for the program: {unknown}")
    defaults = inspect.signature(solve).parameters
    return {k: options.get(k, defaults[k].default) for k in program_keys}


def _make_program(
    generator: Generator,
    lr_size: int,
    *,
    steps: int,
    loss_str: str,
    eps: float,
    noise_type: str,
    num_trainable_noise_layers: int,
    tile_latent: bool,
    bad_noise_layers,
    opt_name: str,
    learning_rate: float,
    lr_schedule: str,
    downscale: Downscale | None,
    keep_intermediate: bool,
    remat: bool,
) -> _Program:
    options = _search_options(
        generator, noise_type, num_trainable_noise_layers, tile_latent, bad_noise_layers
    )
    return _Program(
        arch=generator.arch,
        options=options,
        loss=losses.parse_loss_str(loss_str),
        eps=float(eps),
        opt_name=opt_name,
        learning_rate=float(learning_rate),
        lr_schedule=lr_schedule,
        steps=int(steps),
        downscale=downscale or make_bicubic(generator.resolution // lr_size),
        keep_intermediate=bool(keep_intermediate),
        remat=bool(remat),
    )


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


def _search_options(generator, noise_type, num_trainable, tile_latent, bad_layers):
    if bad_layers is None:
        bad_layers = getattr(generator.arch, "default_bad_noise_layers", ())
    if isinstance(bad_layers, str):
        bad_layers = [int(v) for v in bad_layers.split(".") if v.strip()]
    options = SearchOptions(
        noise_type=noise_type,
        num_trainable_noise_layers=int(num_trainable),
        tile_latent=bool(tile_latent),
        bad_noise_layers=tuple(sorted(int(v) for v in bad_layers)),
    )
    if not generator.has_noise:
        defaults = SearchOptions()
        if (options.noise_type, options.num_trainable_noise_layers, options.tile_latent) != (
            defaults.noise_type,
            defaults.num_trainable_noise_layers,
            defaults.tile_latent,
        ):
            raise ValueError(
                f"noise_type, num_trainable_noise_layers and tile_latent apply to StyleGAN only; "
                f"this {generator.kind} generator has a single latent and no noise"
            )
        return defaults
    generator.arch.check_options(options)
    return options


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


def _check_program(program: _Program, num_samples: int) -> None:
    if program.steps < 1:
        raise ValueError(f"steps must be >= 1, got {program.steps}")
    if not program.eps > 0:
        raise ValueError(f"eps must be > 0, got {program.eps}")
    if num_samples < 1:
        raise ValueError(f"num_samples must be >= 1, got {num_samples}")
    if program.opt_name not in optim.OPTIMIZERS:
        raise ValueError(f"unknown optimizer {program.opt_name!r}; choose from {optim.OPTIMIZERS}")
    if program.lr_schedule not in optim.SCHEDULES:
        raise ValueError(
            f"unknown lr_schedule {program.lr_schedule!r}; choose from {optim.SCHEDULES}"
        )


@functools.partial(jax.jit, static_argnums=(0, 1))
def _sample_starts(arch, options, seeds, image_ids, sample_ids):
    """seeds [B], image_ids [B], sample_ids [B, S] (uint32) -> starts with rows [N = B * S]."""

    def one(seed, image_id, sample):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.key(seed), image_id), sample)
        return arch.sample_start(key, options)

    starts = jax.vmap(lambda t, i, ss: jax.vmap(lambda s: one(t, i, s))(ss))(
        seeds, image_ids, sample_ids
    )
    return jax.tree.map(lambda x: x.reshape((-1,) + x.shape[2:]), starts)  # [N, ...]


def _start_from_init(generator, options, init, batch, num_samples):
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


def _device_list(devices) -> tuple:
    devices = tuple(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty")
    if len(set(devices)) != len(devices):
        raise ValueError("devices lists a device twice")
    return devices


def _run_on(
    devices: tuple, batch_per_device: int | None, program: _Program, params, ref, start
) -> dict:
    """Runs the search with the sample axis sharded over `devices`, `batch_per_device` rows
    per device at a time; returns host arrays whose sample axis (axis 1 for the per-step
    outputs) may end with padding rows."""
    n, width = ref.shape[0], len(devices)
    if batch_per_device is None:
        if width == 1:  # the plain unsharded program
            put = functools.partial(jax.device_put, device=devices[0])
            return jax.device_get(_run(program, put(params), put(ref), put(start)))
        batch_per_device = -(-n // width)
    width *= batch_per_device
    groups = -(-n // width)
    # Padding repeats the last row: a real input, so the padding rows stay finite and cheap.
    ref, start = jax.tree.map(lambda x: _pad_rows(x, groups * width - n), (ref, start))
    mesh = Mesh(np.asarray(devices), ("samples",))
    params = jax.tree.map(lambda x: _place(x, NamedSharding(mesh, P())), params)
    if groups == 1:  # each device runs the program of one group of the loop below, bitwise
        ref, start = jax.tree.map(
            lambda x: _place(x, NamedSharding(mesh, P("samples"))), (ref, start)
        )
        return _fetch(_run(program, params, ref, start), mesh)
    # [G, W, ...]: groups one after the other, the rows of each spread over the devices.
    ref, start = jax.tree.map(lambda x: x.reshape((groups, width) + x.shape[1:]), (ref, start))
    rows = NamedSharding(mesh, P(None, "samples"))
    ref, start = jax.tree.map(lambda x: _place(x, rows), (ref, start))
    out = _fetch(_run_groups(program, params, ref, start), mesh)

    def ungroup(x):  # [G, W, ...] -> [G * W, ...]
        return np.reshape(x, (-1,) + np.shape(x)[2:])

    def ungroup_steps(x):  # [G, steps, W, ...] -> [steps, G * W, ...]
        x = np.moveaxis(np.asarray(x), 0, 1)
        return x.reshape((x.shape[0], -1) + x.shape[3:])

    per_step = ("history", "intermediate", "trajectory")
    return {k: jax.tree.map(ungroup_steps if k in per_step else ungroup, v) for k, v in out.items()}


def _fetch(out, mesh: Mesh):
    """Device arrays -> whole host arrays (from every host, after a multi-host run)."""
    if mesh.is_multi_process:
        return multihost_utils.process_allgather(out, tiled=True)
    return jax.device_get(out)


def _pad_rows(x, pad: int):
    if not pad:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)


def _place(x, sharding: NamedSharding) -> jax.Array:
    """Puts an array, the same on every process, onto a (possibly multi-host) sharding."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


@functools.partial(jax.jit, static_argnums=0)
def _run_groups(program: _Program, params, ref, start):
    """`_solve_rows` over groups of rows one after the other: ref and start [G, W, ...]."""
    params = _prepare(program.arch, params)
    return jax.lax.map(lambda group: _solve_rows(program, params, *group), (ref, start))


@functools.partial(jax.jit, static_argnums=0)
def _run(program: _Program, params, ref, start):
    return _solve_rows(program, _prepare(program.arch, params), ref, start)


def _prepare(arch, params):
    """The generator's per-call weight preparation (`arch.prepare`, optional), done once
    before the optimization loop rather than in every step."""
    prepare = getattr(arch, "prepare", None)
    return params if prepare is None else prepare(params)


def _solve_rows(program: _Program, params, ref, start):
    """The whole search for the rows of ref [N, h, w, 3] and start (leaves [N, ...]);
    params as `arch.prepare` returns them."""
    arch, options = program.arch, program.options
    leaves, treedef = jax.tree.flatten(start)
    mask = jax.tree.leaves(arch.trainable(options))
    axes = jax.tree.leaves(arch.sphere_axes(options), is_leaf=lambda x: isinstance(x, tuple))
    train_ids = [i for i, m in enumerate(mask) if m]
    train_axes = [axes[i] for i in train_ids]
    fixed = {i: leaves[i] for i, m in enumerate(mask) if not m}
    variables = [leaves[i] for i in train_ids]
    tiled = options.tile_latent
    optimizer = program.optimizer()
    n = ref.shape[0]

    def merge(variables):
        full = [None] * len(leaves)
        for i, v in zip(train_ids, variables, strict=True):
            full[i] = v
        for i, v in fixed.items():
            full[i] = v
        return jax.tree.unflatten(treedef, full)

    def render(variables):
        return arch.render(params, merge(variables), options)

    if program.remat:
        # Keep the conv and matmul outputs, recompute the elementwise layers between them
        # (noise, leaky ReLU, instance norm, modulation) in the backward pass.
        render = jax.checkpoint(render, policy=jax.checkpoint_policies.dots_saveable)

    def objective(variables):
        images, dlatents = render(variables)
        gen_lr = program.downscale(images)
        terms = losses.loss_terms(
            gen_lr, ref, dlatents, eps=program.eps, names=program.term_names, tiled=tiled
        )
        total = losses.total_loss(terms, program.loss)  # [N]
        report = dict(terms, L2=losses.l2_error(gen_lr, ref), TOTAL=total)
        return jnp.sum(total), (report, images, gen_lr)

    def step(state, j):
        grads, (report, images, gen_lr) = jax.grad(objective, has_aux=True)(state["variables"])
        total = report["TOTAL"]
        failed = state["failed"] | ~jnp.isfinite(total)
        better = ~failed & (total < state["best"]["loss"])
        best = _select(
            better,
            {"loss": total, "hr": images, "lr": gen_lr, "l2": report["L2"], "step": j},
            state["best"],
        )
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["variables"])
        moved = optax.apply_updates(state["variables"], updates)
        moved = [
            sphere.project_to_sphere(v, r, a)
            for v, r, a in zip(moved, state["radii"], train_axes, strict=True)
        ]
        # A sample whose loss turned NaN keeps its last finite variables (spec: isolated).
        moved = [
            _where_rows(failed, old, new)
            for old, new in zip(state["variables"], moved, strict=True)
        ]
        new_state = {
            "variables": moved,
            "opt_state": opt_state,
            "radii": state["radii"],
            "best": best,
            "failed": failed,
        }
        outputs = {"history": report}
        if program.keep_intermediate:
            outputs["intermediate"] = jnp.clip(images, 0.0, 1.0)
            outputs["variables"] = merge(moved)
        return new_state, outputs

    r = arch.resolution
    h = ref.shape[1]
    state = {
        "variables": variables,
        "opt_state": optimizer.init(variables),
        "radii": [sphere.sphere_radius(v, a) for v, a in zip(variables, train_axes, strict=True)],
        "best": {
            "loss": jnp.full((n,), jnp.inf),
            "hr": jnp.zeros((n, r, r, 3)),
            "lr": jnp.zeros((n, h, h, 3)),
            "l2": jnp.full((n,), jnp.inf),
            "step": jnp.zeros((n,), jnp.int32),
        },
        "failed": jnp.zeros((n,), bool),
    }
    state, outputs = jax.lax.scan(step, state, jnp.arange(program.steps, dtype=jnp.int32))
    best = state["best"]
    return {
        "hr": jnp.clip(best["hr"], 0.0, 1.0),
        "lr": jnp.clip(best["lr"], 0.0, 1.0),
        "l2": best["l2"],
        "success": ~state["failed"] & (best["l2"] <= program.eps),
        "failed": state["failed"],
        "best_step": best["step"],
        "final": merge(state["variables"]),
        "history": outputs["history"],
        "intermediate": outputs.get("intermediate"),
        "trajectory": outputs.get("variables"),
    }


def _where_rows(rows: jax.Array, if_true, if_false):
    """Per-sample select between two pytrees whose leaves have a leading sample axis."""

    def pick(a, b):
        mask = rows.reshape(rows.shape + (1,) * (jnp.ndim(a) - 1))
        return jnp.where(mask, a, b)

    return jax.tree.map(pick, if_true, if_false)


def _select(rows, new, old):
    new = dict(new, step=jnp.broadcast_to(new["step"], rows.shape))
    return _where_rows(rows, new, old)
