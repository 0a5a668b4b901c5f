"""`solve`: the driver of PULSE's latent search (`search.py`) as one compiled program; also
`lower` (that program, not run) and `init`/`finalize` (a search stepped by hand).

The settings arrive as one typed value, a `SearchOptions` (keywords naming its fields are
a notebook's shorthand for the same value), and travel unchanged into the compiled
`search.Program`. Every sample of every image is optimized at once, as the rows of one
leading axis N = images x samples (unlike the reference, success, the best image and NaN
handling are decided per sample; docs/method.md section 10). `solve` checks its inputs into
a `problem.Problem`, then runs `search.start_state`, a `lax.scan` of `search.step` and
`search.final_rows` under one `jax.jit` (`lower` gives that program without running it). The program
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
launchers therefore form groups from the fixed work list (`runs.engine.work_groups`). Left
to its default (all rows at once) the per-device batch follows N and the device count,
and compilers may round differently for other batch sizes; Adam's normalised steps then
grow rounding-level differences into visible ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from pulse_jax import search
from pulse_jax.generators.base import Generator
from pulse_jax.options import ConfigError, SearchMode, SearchOptions
from pulse_jax.problem import Problem, SolveResult, make_problem, to_result
from pulse_jax.search import Downscale, SearchState

__all__ = [
    "SearchProgress",
    "SolveResult",
    "compiled_memory",
    "finalize",
    "init",
    "lower",
    "rows_one_at_a_time",
    "solve",
]


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


def with_overrides(options: SearchOptions | None, overrides: dict[str, Any]) -> SearchOptions:
    """`options` (default `SearchOptions()`) with some fields replaced: the keyword
    convenience of `solve(..., steps=50)`, which builds the same value as
    `solve(..., SearchOptions(steps=50))`.

    Raises:
      TypeError: a keyword that is neither one of the function's nor an option.
      ConfigError: a value that cannot work (naming the option).
    """
    options = SearchOptions() if options is None else options
    if not isinstance(options, SearchOptions):
        raise TypeError(f"options must be a SearchOptions, got {type(options).__name__}")
    unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(SearchOptions)})
    if unknown:
        raise TypeError(f"unknown keyword argument(s): {', '.join(unknown)}")
    return dataclasses.replace(options, **overrides) if overrides else options


def rows_one_at_a_time(resolution: int, devices) -> bool:
    """Whether `solve` runs a step's generator passes one row at a time
    (`search.Program.rows_one_at_a_time`): on CPU devices, for generators of 1024 px and
    more, where a batch of 4 rows at once ran slower per row than one row
    (docs/batch_curve_cpu.md); batches at once everywhere else (at 256 px on CPU, 4 rows at
    once were faster per row than one)."""
    return resolution >= 1024 and all(d.platform == "cpu" for d in devices)


def _planned(problem: Problem, call: _Call) -> Problem:
    """The problem with the execution choices that depend on the devices made."""
    one_at_a_time = rows_one_at_a_time(problem.program.arch.resolution, call.devices)
    program = dataclasses.replace(problem.program, rows_one_at_a_time=one_at_a_time)
    return dataclasses.replace(problem, program=program)


def solve(
    lr_images,
    generator: Generator,
    options: SearchOptions | None = None,
    *,
    num_samples: int = 1,
    seed: Any = 0,
    init: dict | None = None,
    image_ids: Any = None,
    sample_ids: Any = None,
    downscale: Downscale | None = None,
    keep_intermediate: bool = False,
    remat: bool = False,
    devices: Sequence[jax.Device] | None = None,
    batch_per_device: int | None = None,
    progress: Callable[[SearchProgress], None] | None = None,
    progress_every: int | None = None,
    lpips_weights: Any = None,
    **overrides: Any,
) -> SolveResult:
    """Searches the generator's latent space for images that downscale to `lr_images`.

    Args:
      lr_images: float32 [B, h, w, 3] in [0, 1], square, h dividing the generator's resolution.
      generator: from `pulse_jax.load_generator`.
      options: the search options (PULSE's names and defaults); default `SearchOptions()`.
      num_samples: S samples per image, each from its own start.
      seed: an int or [B] ints in [0, 2**32); a start depends only on the seed, the image's
        id and the sample index (docs/method.md section 8.1).
      init: an explicit start, {"latent": [B, S, ...], "noise": L arrays [B, S, r, r, 1]}
        (noise for StyleGAN only), instead of drawing one from `seed`.
      image_ids: [B] ids of the images for seeding (default 0..B-1; sweeps: their positions).
      sample_ids: [B, S] sample indices for seeding (default 0..S-1 for every image); a
        resumed sweep passes the ones it still needs. Ignored with `init`.
      downscale: any differentiable degradation [N, R, R, 3] -> [N, h, w, 3], used as it
        is (with `options.eps` as the threshold) instead of the `operator` option.
      keep_intermediate: also return the image and the variables of every step.
      remat: recompute activations in the backward pass (`search.Program.remat`).
      devices: the devices the sample axis is sharded over (module docstring); default all
        of `jax.devices()` (after `jax.distributed.initialize`, of every host: every process
        then makes the same call and gets the whole result). One device: unsharded.
      batch_per_device: samples each device optimizes at once (the memory knob; the rows are
        padded and run in groups of devices x batch_per_device); default all at once.
        Results then depend on the groups only (docs/method.md section 8.2).
      progress: called from inside the compiled step loop, on the host of the first device,
        with a `SearchProgress` every `progress_every` steps and after the last; an
        exception it raises is raised when the search ends. One at a time per process.
      progress_every: default 1 with `progress` (PULSE printed every step), else 0 (no host
        callback in the program). Results are bitwise the same with any value; each report
        makes the device wait for the host (on a GPU or TPU report every 10 or more steps).
      lpips_weights: with `LPIPS` in `loss_str`, its weights; default the converted VGG16.
      **overrides: search options by name (`solve(lr, g, steps=50)`), a notebook's
        shorthand for `solve(lr, g, dataclasses.replace(options, steps=50))`.

    Returns a `SolveResult`.

    Raises:
      TypeError: an unknown keyword.
      ValueError: bad inputs; `options.ConfigError` (a ValueError) for a bad option.
    """
    progress_every = (0 if progress is None else 1) if progress_every is None else progress_every
    if progress is not None and progress_every < 1:
        raise ValueError("progress needs progress_every >= 1")
    problem, batch = make_problem(
        lr_images, generator, with_overrides(options, overrides), num_samples=num_samples,
        seed=seed, init=init, image_ids=image_ids, sample_ids=sample_ids, downscale=downscale,
        keep_intermediate=keep_intermediate, remat=remat, progress_every=progress_every,
        lpips_weights=lpips_weights,
    )  # fmt: skip
    call = _plan(devices, batch_per_device, problem.ref.shape[0])
    problem = _planned(problem, call)
    if progress is None:
        out = call.run(problem)
    else:
        watch = _Watch(progress, call, batch, problem)
        with search.listening(watch):
            out = call.run(problem)
        if watch.error is not None:
            raise watch.error
    return to_result(out, batch, problem.num_samples, problem.program.options.steps)


def lower(
    lr_images,
    generator: Generator,
    options: SearchOptions | None = None,
    *,
    num_samples: int = 1,
    downscale: Downscale | None = None,
    keep_intermediate: bool = False,
    remat: bool = False,
    devices: Sequence[jax.Device] | None = None,
    batch_per_device: int | None = None,
    progress_every: int = 0,
    lpips_weights: Any = None,
    **overrides: Any,
) -> jax.stages.Lowered:
    """The lowering of exactly the program `solve` runs for these arguments (the one-device
    program, or the sharded group program), without running it:
    `.compile().memory_analysis()`, `.as_text()`, `.cost_analysis()`.

    Nothing is placed on the devices: the program is lowered from abstract values
    (`jax.ShapeDtypeStruct`) with the shapes and shardings `solve` would give its arrays, so
    `devices` may be those of a compile-only topology (`jax.experimental.topologies`: a TPU
    slice or a GPU without the hardware; `experiments/plan.py`). The seeds do not change
    the program; `progress_every=k` is the program of `solve(..., progress=fn,
    progress_every=k)`.

    Args: as for `solve`.
    """
    options = with_overrides(options, overrides)
    problem, _ = make_problem(
        lr_images, generator, options, num_samples=num_samples, downscale=downscale,
        keep_intermediate=keep_intermediate, remat=remat, progress_every=progress_every,
        lpips_weights=lpips_weights,
    )  # fmt: skip
    call = _plan(devices, batch_per_device, problem.ref.shape[0])
    return call.fn.lower(call.abstract(_planned(problem, call)))


def init(
    lr_images,
    generator: Generator,
    options: SearchOptions | None = None,
    *,
    num_samples: int = 1,
    seed: Any = 0,
    init: dict | None = None,
    downscale: Downscale | None = None,
    keep_intermediate: bool = False,
    lpips_weights: Any = None,
    **overrides: Any,
) -> SearchState:
    """The state of a search before its first step, on the default device (then
    `pulse_jax.step` per step and `finalize`).

    Args: as for `solve` (one device, all rows at once; a sweep's `image_ids` and
      `sample_ids` are `solve`'s alone).
    """
    options = with_overrides(options, overrides)
    if options.mode != SearchMode.PULSE:
        raise ConfigError(f"mode {options.mode} runs through solve only (init/step: PULSE's)")
    problem, _ = make_problem(
        lr_images, generator, options, num_samples=num_samples, seed=seed, init=init,
        downscale=downscale, keep_intermediate=keep_intermediate, lpips_weights=lpips_weights,
    )  # fmt: skip
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


@jax.jit
def _init_jit(problem: Problem) -> SearchState:
    params = problem.program.arch.prepare(problem.params)
    return search.start_state(
        problem.program, params, problem.ref, problem.start, problem.num_samples,
        problem.loss_params,
    )  # fmt: skip


_final_jit = jax.jit(search.final_rows)


def compiled_memory(
    generator: Generator,
    lr_size: int,
    batch_per_device: int,
    options: SearchOptions | None = None,
    *,
    device: jax.Device | None = None,
    downscale: Downscale | None = None,
    keep_intermediate: bool = False,
    remat: bool = False,
) -> dict[str, int]:
    """The memory one device needs for `solve(..., batch_per_device=...)`, without running it.

    Compiles the search for one group of `batch_per_device` samples of `lr_size` px inputs
    for `device` (`lower`) and reads XLA's memory analysis of it. This is how to choose
    `batch_per_device`: the largest whose `total_bytes` fits in the device's memory with
    some headroom (`pulse_jax.runs.sweep.plan_batch_size` tries powers of two). Measure on
    the accelerator that will run the search: the CPU compiler's figures differ, and there
    it also undoes `remat` (it merges the recomputation with the forward pass).

    Args:
      generator: from `pulse_jax.load_generator`.
      lr_size: side of the low-resolution inputs.
      batch_per_device: samples per device and group.
      options: the search options (default `SearchOptions()`).
      device: where to compile for; default the first local device.
      downscale, keep_intermediate, remat: as for `solve`.

    Returns:
      {"argument_bytes", "output_bytes", "temp_bytes", "total_bytes"} (total = the sum).
    """
    if lr_size < 1 or generator.resolution % lr_size:
        raise ValueError(f"lr_size {lr_size} does not divide {generator.resolution}")
    if batch_per_device < 1:
        raise ValueError(f"batch_per_device must be >= 1, got {batch_per_device}")
    images = np.zeros((batch_per_device, lr_size, lr_size, 3), np.float32)
    device = device or jax.local_devices()[0]
    lowered = lower(
        images,
        generator,
        options,
        devices=[device],
        downscale=downscale,
        keep_intermediate=keep_intermediate,
        remat=remat,
    )
    stats = lowered.compile().memory_analysis()
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
