"""`solve`: the driver of PULSE's latent search (`search.py`) as one compiled program.

Every sample of every image is optimized at once, as the rows of one leading axis
N = images x samples (unlike the reference, success, the best image and NaN handling are
decided per sample; docs/method.md section 10). `solve` checks its inputs into a `search.Problem`,
then runs `search.start_state`, a `lax.scan` of `search.step` and `search.final_rows`
under one `jax.jit` (`lower` gives that program without running it). The program
(arch, options, degradation) is static; the generator's parameters, the targets and the
starting point are traced, so a second call with the same shapes and options does not
recompile. Before the loop the generator's weights are prepared once (`arch.prepare`:
scaled, transposed and sub-pixel kernels), so a step runs the layers and nothing that
depends on the weights alone. On CPU devices, a 1024 px generator's rows go through it one
after the other inside each step (`rows_one_at_a_time`: a call's working set stays one
sample's; docs/batch_curve_cpu.md); elsewhere all rows at once.

Devices: the sample axis is sharded over the devices `solve` is given (a 1-D
`Mesh` named "samples"; rows split with `NamedSharding(mesh, P("samples"))`,
parameters replicated with `P()`), on one host or, after
`jax.distributed.initialize`, across hosts. Each device optimizes
`batch_per_device` rows at a time; N is padded to a multiple of devices x
batch_per_device with copies of the last row, which are dropped from the
result. With `batch_per_device` fixed every device runs the same program on
the same shapes, so a sample's result does not depend on the device count
(bitwise, tests/test_sharding.py). It may depend, at the rounding level, on its
position in its group and so on the other samples (docs/method.md section 8.2);
launchers therefore form groups from the fixed work list (`engine.work_groups`). Left
to its default (all rows at once) the per-device batch follows N and the device count,
and compilers may round differently for other batch sizes; Adam's normalised steps then
grow rounding-level differences into visible ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pulse_jax import search
from pulse_jax.generators.base import Generator
from pulse_jax.options import with_options
from pulse_jax.search import Problem, SearchProgress, SolveResult

__all__ = [
    "SearchProgress",
    "SolveResult",
    "compiled_memory",
    "lower",
    "rows_one_at_a_time",
    "solve",
]


def _prepare(
    lr_images,
    generator: Generator,
    *,
    devices: Any = None,
    batch_per_device: int | None = None,
    **kwargs: Any,
) -> tuple:
    """(the call, the problem, B): `solve`'s arguments checked and planned."""
    problem, batch = search.inputs(lr_images, generator, **kwargs)
    call = _plan(devices, batch_per_device, problem.ref.shape[0])
    one_at_a_time = rows_one_at_a_time(problem.program.arch.resolution, call.devices)
    program = dataclasses.replace(problem.program, rows_one_at_a_time=one_at_a_time)
    return call, dataclasses.replace(problem, program=program), batch


def rows_one_at_a_time(resolution: int, devices) -> bool:
    """Whether `solve` runs a step's generator passes one row at a time
    (`search.Program.rows_one_at_a_time`): on CPU devices, for generators of 1024 px and
    more, where a batch of 4 rows at once ran slower per row than one row
    (docs/batch_curve_cpu.md); batches at once everywhere else (at 256 px on CPU, 4 rows at
    once were faster per row than one)."""
    return resolution >= 1024 and all(d.platform == "cpu" for d in devices)


@with_options(_prepare, search.inputs)
def solve(
    lr_images,
    generator: Generator,
    *,
    progress: Callable[[SearchProgress], None] | None = None,
    **kwargs: Any,
) -> SolveResult:
    """Searches the generator's latent space for images that downscale to `lr_images`.

    Args:
      lr_images: float32 [B, h, w, 3] in [0, 1], square, h dividing the generator's resolution.
      generator: from `pulse_jax.load_generator`.
      num_samples: S samples per image, each from its own start.
      seed: an int (every image) or [B] non-negative ints below 2**32 (one seed per
        image); a start depends only on the seed, the image's id and the sample index
        (docs/method.md section 8.1).
      init: an explicit start, {"latent": [B, S, ...], "noise": L arrays [B, S, r, r, 1]}
        (noise for StyleGAN only), instead of drawing one from `seed`.
      downscale: any differentiable degradation [N, R, R, 3] -> [N, h, w, 3], used as it
        is (with `eps` as the threshold) instead of the `operator` option.
      image_ids: [B] integer ids of the images for seeding (default 0..B-1); sweeps pass the
        images' global positions so that splitting work does not change any start.
      sample_ids: [B, S] integer sample indices for seeding (default 0..S-1 for every
        image; S is then `num_samples`); a sweep that resumes passes the indices it still
        needs. Ignored with `init`.
      keep_intermediate: also return the image and the variables of every step.
      devices: the devices the sample axis is sharded over (a 1-D `Mesh` "samples");
        default all of `jax.devices()` (after `jax.distributed.initialize`, every device of
        every host: then every process must make the same call, and each gets the whole
        result). A list of one device runs the unsharded program on it.
      batch_per_device: how many samples each device optimizes at once (the memory knob);
        the N = B x S samples are padded with copies of the last row to a multiple of
        devices x batch_per_device and run in groups of that many, one after the other.
        Default: all at once. With it fixed, results do not change with the device count
        (bitwise); with the same groups they are bitwise equal on the same machine kind,
        and otherwise equal up to rounding (docs/method.md section 8.2).
      remat: rematerialize the generator's activations in the backward pass
        (`search.Program.remat`): larger batches fit, the same result up to rounding. An
        execution setting, not a search option.
      progress: called during the search, from inside the compiled step loop, with a
        `SearchProgress` after every `progress_every` steps of a group and after its last
        (steps done, every sample's best L2 so far, which reached `eps`). It runs on the
        host of the first device (process 0 of a multi-host call; other processes get no
        calls) while the device waits; an exception it raises is raised when the search
        ends. One search with `progress` at a time per process.
      progress_every: how often the step loop reports (an execution setting: the result
        is bitwise the same with any value). Default 0: no reports, no host callback in
        the program; with `progress` given, 1 (every step, as PULSE printed). Each report
        makes the device wait for the host: on a GPU or TPU with steps of milliseconds,
        report every 10 or more steps. `lower(..., progress_every=k)` is the program
        `solve(..., progress=fn, progress_every=k)` runs.
      lpips_weights: with `LPIPS` in `loss_str`, its weights (`lpips.LPIPSWeights`);
        default the converted VGG16 file (`lpips.load_lpips`; docs/lpips.md).
      **kwargs: the keywords above (but devices and batch_per_device, `search.inputs`) and
        the search options, `SearchOptions`' fields (below; PULSE's names and defaults;
        `bad_noise_layers` also takes PULSE's '.'-separated string).

    Returns:
      A `SolveResult`.

    Raises:
      TypeError: an unknown keyword.
      ValueError: bad inputs; `options.ConfigError` (a ValueError) for a bad option.
    """
    if progress is not None:
        kwargs.setdefault("progress_every", 1)
        if kwargs["progress_every"] < 1:
            raise ValueError("progress needs progress_every >= 1")
    call, problem, batch = _prepare(lr_images, generator, **kwargs)
    if progress is None:
        out = call.run(problem)
    else:
        watch = _Watch(progress, call, batch, problem)
        with search.listening(watch):
            out = call.run(problem)
        if watch.error is not None:
            raise watch.error
    return search.to_result(out, batch, problem.num_samples, problem.program.options.steps)


@with_options(_prepare, search.inputs)
def lower(lr_images, generator: Generator, **kwargs: Any) -> jax.stages.Lowered:
    """The lowering of exactly the program `solve(lr_images, generator, ...)` runs for these
    arguments (the one-device program, or the sharded group program), without running it:
    `.compile().memory_analysis()`, `.as_text()`, `.cost_analysis()`.

    Nothing is placed on the devices: the program is lowered from abstract values
    (`jax.ShapeDtypeStruct`) with the shapes and shardings `solve` would give its arrays, so
    `devices` may be those of a compile-only topology (`jax.experimental.topologies`: a TPU
    slice or a GPU without the hardware; `experiments/plan.py`).

    Args: as for `solve` (the keywords `solve` takes, checked the same way).
    """
    call, problem, _ = _prepare(lr_images, generator, **kwargs)
    return call.fn.lower(call.abstract(problem))


def compiled_memory(
    generator: Generator,
    lr_size: int,
    batch_per_device: int,
    *,
    device: jax.Device | None = None,
    **options: Any,
) -> dict[str, int]:
    """The memory one device needs for `solve(..., batch_per_device=...)`, without running it.

    Compiles the search for one group of `batch_per_device` samples of `lr_size` px inputs
    for `device` (`lower`) and reads XLA's memory analysis of it. This is how to choose
    `batch_per_device`: the largest whose `total_bytes` fits in the device's memory with
    some headroom (`pulse_jax.sweep.plan_batch_size` tries powers of two). Measure on the
    accelerator that will run the search: the CPU compiler's figures differ, and there it
    also undoes `remat` (it merges the recomputation with the forward pass).

    Args:
      generator: from `pulse_jax.load_generator`.
      lr_size: side of the low-resolution inputs.
      batch_per_device: samples per device and group.
      device: where to compile for; default the first local device.
      **options: `solve`'s keywords that shape the program: the search options,
        `downscale`, `keep_intermediate`, `remat`.

    Returns:
      {"argument_bytes", "output_bytes", "temp_bytes", "total_bytes"} (total = the sum).
    """
    if lr_size < 1 or generator.resolution % lr_size:
        raise ValueError(f"lr_size {lr_size} does not divide {generator.resolution}")
    if batch_per_device < 1:
        raise ValueError(f"batch_per_device must be >= 1, got {batch_per_device}")
    images = np.zeros((batch_per_device, lr_size, lr_size, 3), np.float32)
    device = device or jax.local_devices()[0]
    stats = lower(images, generator, devices=[device], **options).compile().memory_analysis()
    out = {
        "argument_bytes": int(stats.argument_size_in_bytes),
        "output_bytes": int(stats.output_size_in_bytes),
        "temp_bytes": int(stats.temp_size_in_bytes),
    }
    out["total_bytes"] = sum(out.values())
    return out


# -- devices and groups ---------------------------------------------------------------------


@jax.jit
def _run(problem: Problem) -> dict:
    """The whole search of the problem's rows (`search.run_rows`)."""
    params = problem.program.arch.prepare(problem.params)
    return search.run_rows(
        problem.program, params, problem.ref, problem.start, 1, problem.loss_params
    )


@jax.jit
def _run_groups(problem: Problem) -> dict:
    """`_run` over groups of rows one after the other: ref and start [G, W, ...]; the
    parameters are prepared once, before the groups."""
    program, params = problem.program, problem.program.arch.prepare(problem.params)
    return jax.lax.map(
        lambda rows: search.run_rows(program, params, *rows, 1, problem.loss_params),
        (problem.ref, problem.start),
    )


@dataclasses.dataclass(frozen=True)
class _Call:
    """How `solve` runs a problem of N rows on its devices: the compiled function, how the
    problem's arrays are placed for it, and how its outputs come back as host rows."""

    fn: Callable[[Problem], dict]
    devices: tuple
    mesh: Mesh | None = None  # None: the plain unsharded program on devices[0]
    groups: int = 1  # > 1: rows reshaped [G, W, ...], run one group after the other
    width: int = 0  # rows per group: devices x batch_per_device

    def _layout(self) -> tuple[tuple, NamedSharding, NamedSharding]:
        """(the rows' leading shape, their sharding, the sharding of what every device holds
        whole) on the mesh: what `place` puts and `abstract` describes."""
        if self.groups == 1:  # each device runs the program of one group of the loop, bitwise
            lead, axes = (self.width,), P("samples")
        else:  # [G, W, ...]: groups one after the other, the rows of each over the devices
            lead, axes = (self.groups, self.width), P(None, "samples")
        return lead, NamedSharding(self.mesh, axes), NamedSharding(self.mesh, P())

    def place(self, problem: Problem) -> Problem:
        """The problem padded, grouped and put on the devices."""
        if self.mesh is None:
            return jax.device_put(problem, self.devices[0])
        lead, rows, whole = self._layout()
        pad = self.groups * self.width - problem.ref.shape[0]
        # Padding repeats the last row: a real input, so the padding rows stay finite and cheap.
        ref, start = jax.tree.map(
            lambda x: _place(_pad_rows(x, pad).reshape(lead + x.shape[1:]), rows),
            (problem.ref, problem.start),
        )
        params, loss_params = jax.tree.map(
            lambda x: _place(x, whole), (problem.params, problem.loss_params)
        )
        return dataclasses.replace(
            problem, params=params, ref=ref, start=start, loss_params=loss_params
        )

    def abstract(self, problem: Problem) -> Problem:
        """What `place` gives, as abstract values: the same shapes, dtypes and shardings,
        no array placed (`lower` for devices that run nothing)."""
        if self.mesh is None:
            spec = jax.sharding.SingleDeviceSharding(self.devices[0])
            return jax.tree.map(lambda x: _abstract(x, np.shape(x), spec), problem)
        lead, rows, whole = self._layout()
        ref, start = jax.tree.map(
            lambda x: _abstract(x, lead + np.shape(x)[1:], rows), (problem.ref, problem.start)
        )
        params, loss_params = jax.tree.map(
            lambda x: _abstract(x, np.shape(x), whole), (problem.params, problem.loss_params)
        )
        return dataclasses.replace(
            problem, params=params, ref=ref, start=start, loss_params=loss_params
        )

    def run(self, problem: Problem) -> dict:
        """Runs the search: host arrays whose rows (axis 1 of the per-step outputs) may end
        with padding rows."""
        out = self.fn(self.place(problem))
        if self.mesh is None:
            return jax.device_get(out)
        out = _fetch(out, self.mesh)
        if self.groups == 1:
            return out
        per_step = ("history", "intermediate", "variables")
        return {
            k: jax.tree.map(_ungroup_steps if k in per_step else _ungroup, v)
            for k, v in out.items()
        }


def _plan(devices, batch_per_device: int | None, rows: int) -> _Call:
    """The call for `rows` rows on `devices`, `batch_per_device` rows per device at a time."""
    devices = tuple(jax.devices() if devices is None else devices)
    if not devices:
        raise ValueError("devices is empty")
    if len(set(devices)) != len(devices):
        raise ValueError("devices lists a device twice")
    if batch_per_device is not None and batch_per_device < 1:
        raise ValueError(f"batch_per_device must be >= 1, got {batch_per_device}")
    if batch_per_device is None:
        if len(devices) == 1:
            return _Call(_run, devices)
        batch_per_device = -(-rows // len(devices))
    width = len(devices) * batch_per_device
    groups = -(-rows // width)
    mesh = Mesh(np.asarray(devices), ("samples",))
    return _Call(_run if groups == 1 else _run_groups, devices, mesh, groups, width)


class _Watch:
    """The host's side of `solve(progress=...)`: the step loop's reports of one group's rows
    -> a `SearchProgress` over every sample (groups run one after the other)."""

    def __init__(self, progress: Callable, call: _Call, batch: int, problem: Problem):
        self.progress, self.batch, self.problem = progress, batch, problem
        self.groups = call.groups
        rows = call.groups * call.width if call.mesh is not None else problem.ref.shape[0]
        self.l2 = np.full(rows, np.inf, np.float32)
        self.failed = np.zeros(rows, bool)
        self.group, self.last = 0, 0
        self.error: Exception | None = None

    def __call__(self, count: int, l2: np.ndarray, failed: np.ndarray) -> None:
        if count <= self.last:  # the next group's loop started
            self.group += 1
        self.last = count
        at = slice(self.group * l2.shape[0], (self.group + 1) * l2.shape[0])
        self.l2[at], self.failed[at] = l2, failed
        program, samples = self.problem.program, self.problem.num_samples
        n = self.batch * samples
        l2_rows = self.l2[:n].reshape(self.batch, samples).copy()  # a report keeps its figures
        failed_rows = self.failed[:n].reshape(self.batch, samples)
        report = SearchProgress(
            step=count,
            steps=program.options.steps,
            group=self.group,
            groups=self.groups,
            l2=l2_rows,
            success=~failed_rows & (l2_rows <= np.float32(program.eps)),
        )
        try:
            self.progress(report)
        except Exception as e:  # noqa: BLE001 - raised by solve when the search ends
            self.error = self.error or e


def _ungroup(x):  # [G, W, ...] -> [G * W, ...]
    return np.reshape(x, (-1,) + np.shape(x)[2:])


def _ungroup_steps(x):  # [G, steps, W, ...] -> [steps, G * W, ...]
    x = np.moveaxis(np.asarray(x), 0, 1)
    return x.reshape((x.shape[0], -1) + x.shape[3:])


def _fetch(out, mesh: Mesh):
    """Device arrays -> whole host arrays (from every host, after a multi-host run)."""
    if mesh.is_multi_process:
        return multihost_utils.process_allgather(out, tiled=True)
    return jax.device_get(out)


def _pad_rows(x, pad: int):
    if not pad:
        return x
    return jnp.concatenate([x, jnp.repeat(x[-1:], pad, axis=0)], axis=0)


def _abstract(x, shape: tuple, sharding) -> jax.ShapeDtypeStruct:
    """An abstract value of `x`'s dtype (and weak type) with this shape and sharding."""
    weak = bool(getattr(getattr(x, "aval", None), "weak_type", False))
    dtype = x.dtype if hasattr(x, "dtype") else np.result_type(x)
    return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding, weak_type=weak)


def _place(x, sharding: NamedSharding) -> jax.Array:
    """Puts an array, the same on every process, onto a (possibly multi-host) sharding."""
    if sharding.is_fully_addressable:
        return jax.device_put(x, sharding)
    host = np.asarray(x)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])
