"""`SearchOptions`: every option of a PULSE search, defined once.

Each field is one option: its name (PULSE's own flag name), type, default and help, how it
is checked (`Spec`: bounds, a check, a parser for its flag string) and its scope: options of
`Scope.STYLE` exist only for generators with noise maps and style layers (StyleGAN v1, v2).
One value of it travels from the launchers' flags (`runs.cli.define_search_flags`,
`runs.config.SearchConfig.options`) through `solve` into the compiled `search.Program`; the
flags and the manifest's settings (`runs.config.SearchConfig.settings`) derive from the
fields.

A generator declares the scopes of the options it takes (`arch.option_scopes`) and its own
defaults (`arch.option_defaults()`, e.g. PULSE's `bad_noise_layers` 17 for a 1024 px
StyleGAN); `for_arch` fills those in and refuses options the generator does not have.

Invalid options raise `ConfigError` (a ValueError) naming the option, when the value is
made, so an options value always holds a runnable setting of its generic options.
"""

from __future__ import annotations

import dataclasses
import enum
import functools
import numbers
import typing
from collections.abc import Callable
from typing import Any

import numpy as np

from pulse_jax import losses
from pulse_jax.degrade import operators
from pulse_jax.degrade.operators import OperatorName


class ConfigError(ValueError):
    """Settings, a generator and an output folder that cannot work together."""


class Scope(enum.StrEnum):
    """Which generators an option exists for."""

    GENERIC = "generic"  # every generator
    STYLE = "style"  # generators with noise maps and style layers (StyleGAN v1 and v2)


class NoiseType(enum.StrEnum):
    """StyleGAN's noise maps: all zero, random and fixed, or random and optimized."""

    ZERO = "zero"
    FIXED = "fixed"
    TRAINABLE = "trainable"


class OptName(enum.StrEnum):
    """The optimizers (`optim.make_optimizer`, torch.optim semantics)."""

    SGD = "sgd"
    ADAM = "adam"
    SGDM = "sgdm"
    ADAMAX = "adamax"


class LRSchedule(enum.StrEnum):
    """The learning-rate schedules (`optim.lr_factor`)."""

    FIXED = "fixed"
    LINEAR1CYCLE = "linear1cycle"
    LINEAR1CYCLEDROP = "linear1cycledrop"


class SearchMode(enum.StrEnum):
    """The search run over the generator (docs/method.md sections 7, 11 and 12)."""

    PULSE = "pulse"
    PROJECTOR = "projector"
    ILO = "ilo"


# PULSE's own optimizer and search-space options: the projector and ILO have their own
# (docs/method.md sections 11 and 12) and refuse them set away from their defaults.
PULSE_ONLY = (
    "noise_type",
    "num_trainable_noise_layers",
    "tile_latent",
    "bad_noise_layers",
    "opt_name",
    "learning_rate",
    "lr_schedule",
)


def choose(choices: type[enum.StrEnum], value: Any, name: str) -> Any:
    """`value` as a member of `choices`, or a ConfigError naming `name` and the choices."""
    try:
        return choices(value)
    except ValueError:
        raise ConfigError(
            f"unknown {name} {value!r}; valid choices: {', '.join(choices)}"
        ) from None


def parse_layers(text: str) -> tuple[int, ...]:
    """PULSE's '.'-separated layer numbers ("17", "11.17", "" for none) -> a tuple."""
    try:
        return tuple(int(v) for v in text.split(".") if v.strip())
    except ValueError:
        raise ConfigError(
            f"bad_noise_layers must be '.'-separated layer numbers, got {text!r}"
        ) from None


def format_layers(layers: tuple[int, ...]) -> str:
    """The inverse of `parse_layers`: (11, 17) -> "11.17"."""
    return ".".join(map(str, layers))


@dataclasses.dataclass(frozen=True)
class Spec:
    """How an option is offered and checked (a field's `metadata["option"]`).

    Attributes:
      help: the flag's help, and the keyword's documentation.
      scope: which generators have the option.
      lower: smallest allowed value (inclusive), for numbers.
      positive: the value must be > 0.
      check: raises ValueError for a bad value (e.g. a loss string that does not parse).
      parse: the flag's string -> the value (where the type is not a plain flag type).
      format: the value -> the string the flag and the manifest hold (with `parse`).
    """

    help: str
    scope: Scope = Scope.GENERIC
    lower: float | None = None
    positive: bool = False
    check: Callable[[Any], Any] | None = None
    parse: Callable[[str], Any] | None = None
    format: Callable[[Any], str] | None = None


def option(default: Any, help: str, **spec: Any) -> Any:
    """A dataclass field that is a search option (see `Spec`)."""
    return dataclasses.field(default=default, metadata={"option": Spec(help, **spec)})


def _operator_option(name: str) -> Any:
    parameter = operators.PARAMETER[name]
    return option(parameter.default, parameter.help)


@dataclasses.dataclass(frozen=True)
class SearchOptions:
    """The options of a PULSE search; PULSE's option names and defaults."""

    steps: int = option(100, "Optimizer steps.", lower=1)
    loss_str: str = option(
        "100*L2+0.05*GEOCROSS",
        "'+'-separated weight*TERM, TERM in L2, L1, GEOCROSS. GEOCROSS is 0 for the DCGAN "
        "(it has no style layers) and with --tile_latent.",
        check=losses.parse_loss_str,
    )
    eps: float = option(2e-3, "Success threshold on L2 (and the clamp of L2/L1).", positive=True)
    noise_type: NoiseType = option(
        NoiseType.TRAINABLE,
        "StyleGAN only: noise maps all zero, random and fixed, or random and optimized.",
        scope=Scope.STYLE,
    )
    num_trainable_noise_layers: int = option(
        5,
        "StyleGAN only, with --noise_type trainable: noise layers 0..n-1 are optimized.",
        scope=Scope.STYLE,
        lower=0,
    )
    tile_latent: bool = option(
        False, "StyleGAN only: one latent row for every style layer.", scope=Scope.STYLE
    )
    bad_noise_layers: tuple[int, ...] | None = option(
        None,
        "StyleGAN only: '.'-separated noise layers that are always zero. Default: the "
        "generator's (PULSE's 17 for a 1024 px StyleGAN v1, none for StyleGAN2).",
        scope=Scope.STYLE,
        parse=parse_layers,
        format=format_layers,
    )
    opt_name: OptName = option(OptName.ADAM, "Optimizer.")
    learning_rate: float = option(0.4, "Base learning rate.")
    lr_schedule: LRSchedule = option(LRSchedule.LINEAR1CYCLEDROP, "Learning-rate schedule.")
    mode: SearchMode = option(
        SearchMode.PULSE,
        "The search: pulse (PULSE's, docs/method.md section 7), projector (NVIDIA's StyleGAN2 "
        "projector, section 11: one w tiled over the layers from w_avg, a noise regulariser, "
        "its own Adam schedule; StyleGAN only; its distance is --loss_str through "
        "--operator) or ilo (ILO's intermediate layers, section 12: StyleGAN2 only, ILO's "
        "own defaults, --steps split over its 4 stages as 2:2:1:1, bicubic only). The "
        "projector and ilo take none of PULSE's optimizer and noise options.",
    )
    operator: OperatorName = option(
        operators.DEFAULT_OPERATOR,
        "The degradation the loss compares through (PULSE's is bicubic): box (area average), "
        "gaussian (blur, then one sample per block), nearest (one pixel per block), inpaint "
        "(bicubic where --mask observes), denoise (bicubic plus noise of --noise_std), "
        "colorize (grey of the bicubic). The factor is the generator's resolution / input size.",
    )
    blur_sigma: float = _operator_option("blur_sigma")
    noise_std: float = _operator_option("noise_std")
    mask: str = _operator_option("mask")

    def __post_init__(self) -> None:
        for field in option_fields(type(self)):
            value = check_value(type(self), field.name, getattr(self, field.name))
            object.__setattr__(self, field.name, value)

    @property
    def loss(self) -> tuple[tuple[float, str], ...]:
        """`loss_str` parsed: ((weight, TERM), ...)."""
        return losses.parse_loss_str(self.loss_str)

    def degradation(self, side: int, resolution: int) -> operators.Degradation:
        """The operator for `side` px observations of a `resolution` px generator.

        Raises:
          ConfigError: an unknown operator, a bad parameter or an unusable mask.
        """
        params = {name: getattr(self, name) for name in operators.PARAMETER_NAMES}
        try:
            return operators.make_operator(self.operator, side, resolution // side, **params)
        except ValueError as e:
            raise ConfigError(f"--operator {self.operator}: {e}") from None

    def check_mode(self) -> None:
        """Refuses PULSE's own options set away from their defaults in another mode (before
        `for_arch` fills in the generator's defaults).

        Raises:
          ConfigError: naming them.
        """
        fields = {f.name: f for f in option_fields()}
        given = [n for n in PULSE_ONLY if getattr(self, n) != fields[n].default]
        if self.mode != SearchMode.PULSE and given:
            raise ConfigError(
                f"{', '.join(given)}: PULSE's option(s), not the {self.mode} mode's "
                "(it has its own schedule and noise; docs/method.md section 11)"
            )

    def for_arch(self, arch: Any) -> SearchOptions:
        """These options for a generator: its defaults filled in (`arch.option_defaults()`),
        checked against it (`arch.check_options`).

        Raises:
          ConfigError: an option the generator does not have (set away from its default),
            or a value it cannot run (e.g. a noise layer it lacks).
        """
        options = self
        extra = [
            f.name
            for f in option_fields()
            if f.metadata["option"].scope not in arch.option_scopes
            and getattr(options, f.name) != f.default
        ]
        if extra:
            raise ConfigError(
                f"{', '.join(extra)} {'applies' if len(extra) == 1 else 'apply'} to StyleGAN "
                f"only; this generator ({type(arch).__name__}) has a single latent and no noise"
            )
        options.check_mode()
        unset = {k: v for k, v in arch.option_defaults().items() if getattr(options, k) is None}
        options = dataclasses.replace(options, **unset)
        try:
            arch.check_options(options)
            if options.mode == SearchMode.ILO:
                from pulse_jax import ilo  # noqa: PLC0415 - ilo builds on this module

                ilo.check_search_options(options, arch)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        return options


@functools.cache
def option_fields(cls: type = SearchOptions) -> tuple[dataclasses.Field, ...]:
    """The fields of `cls` that are options (`Spec` in their metadata), in order."""
    return tuple(f for f in dataclasses.fields(cls) if "option" in f.metadata)


@functools.cache
def option_types(cls: type = SearchOptions) -> dict[str, Any]:
    """Each option's type, resolved from the annotations."""
    hints = typing.get_type_hints(cls)
    return {f.name: _base_type(hints[f.name]) for f in option_fields(cls)}


OPTION_NAMES = tuple(f.name for f in option_fields())


def scoped(scope: Scope) -> tuple[str, ...]:
    """The names of the options of one scope."""
    return tuple(f.name for f in option_fields() if f.metadata["option"].scope == scope)


def check_value(cls: type, name: str, value: Any) -> Any:
    """Option `name` of `cls` (`SearchOptions` or a subclass) as its type, checked.

    Raises:
      ConfigError: naming the option, for a value that cannot work.
    """
    field = next(f for f in option_fields(cls) if f.name == name)
    if value is None and field.default is None:
        return None
    return _checked(name, field.metadata["option"], option_types(cls)[name], value)


def _checked(name: str, spec: Spec, kind: Any, value: Any) -> Any:
    """One option's value in its type (`kind`, from the annotation), or a ConfigError
    naming the option."""
    if isinstance(value, str) and spec.parse is not None:
        return spec.parse(value)
    if isinstance(kind, type) and issubclass(kind, enum.StrEnum):
        return choose(kind, value, name)
    if kind is tuple:
        return tuple(int(v) for v in value)
    wanted = {bool: (bool, np.bool_), int: numbers.Integral, float: numbers.Real, str: str}
    if not isinstance(value, wanted[kind]) or (kind is not bool and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {kind.__name__}, got {value!r}")
    value = kind(value)
    if spec.lower is not None and value < spec.lower:
        raise ConfigError(f"{name} (--{name}) must be >= {spec.lower}, got {value}")
    if spec.positive and not value > 0:
        raise ConfigError(f"{name} (--{name}) must be > 0, got {value}")
    if spec.check is not None:
        try:
            spec.check(value)
        except ValueError as e:
            raise ConfigError(f"{name} (--{name}) {value!r}: {e}") from None
    return value


def _base_type(hint: Any) -> Any:
    """`X | None` -> X; `tuple[int, ...]` -> tuple."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, type(int | None)) and len(args) == 1:
        hint = args[0]
    return typing.get_origin(hint) or hint
