"""The search settings of a launch: `SearchConfig` (everything that decides a result), the
checks that refuse a bad setting before any work, and how settings are recorded and compared
in a manifest line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from pulse_jax import losses, operators, optim
from pulse_jax.generators.base import Generator, SearchOptions

# The options that exist only for generators with noise maps and style layers (StyleGAN).
NOISE_OPTIONS = ("noise_type", "num_trainable_noise_layers", "tile_latent", "bad_noise_layers")


class ConfigError(ValueError):
    """Settings, a generator and an output folder that cannot work together."""


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything that decides a result; PULSE's option names and defaults.

    Two results with equal `SearchConfig`s (and the same input, image id and
    sample) are the same result, which is what lets a re-run skip finished work.
    """

    generator: str = "dcgan64"
    seed: int = 0
    steps: int = 100
    loss_str: str = "100*L2+0.05*GEOCROSS"
    eps: float = 2e-3
    noise_type: str = "trainable"
    num_trainable_noise_layers: int = 5
    tile_latent: bool = False
    bad_noise_layers: str | None = None  # None: the generator's (arch.default_bad_noise_layers)
    opt_name: str = "adam"
    learning_rate: float = 0.4
    lr_schedule: str = "linear1cycledrop"
    resize: bool = False
    operator: str = str(operators.DEFAULT_OPERATOR)
    blur_sigma: float = operators.PARAMETER["blur_sigma"].default
    noise_std: float = operators.PARAMETER["noise_std"].default
    mask: str = operators.PARAMETER["mask"].default

    def degradation(self, side: int, resolution: int) -> operators.Degradation:
        """The degradation operator for `side` px inputs of a `resolution` px generator.

        Raises:
          ConfigError: an unknown operator, a bad parameter or an unusable mask.
        """
        params = {name: getattr(self, name) for name in operators.PARAMETER_NAMES}
        try:
            return operators.make_operator(self.operator, side, resolution // side, **params)
        except ValueError as e:
            raise ConfigError(f"--operator {self.operator}: {e}") from None

    def solve_kwargs(self, generator: Generator, side: int) -> dict:
        """The keyword arguments of `pulse_jax.solve` for `side` px inputs: the operator as
        `downscale` with its success threshold as `eps` (`operators.Degradation.success_eps`),
        noise options only where they apply."""
        operator = self.degradation(side, generator.resolution)
        kwargs = dict(
            seed=self.seed,
            steps=self.steps,
            loss_str=self.loss_str,
            eps=operator.success_eps(self.eps),
            downscale=operator,
            opt_name=self.opt_name,
            learning_rate=self.learning_rate,
            lr_schedule=self.lr_schedule,
        )
        if generator.has_noise:
            kwargs.update(
                noise_type=self.noise_type,
                num_trainable_noise_layers=self.num_trainable_noise_layers,
                tile_latent=self.tile_latent,
                bad_noise_layers=self.bad_noise_layers,
            )
        return kwargs

    def settings(self, generator: Generator) -> dict:
        """The settings recorded in each manifest line (noise options and operator
        parameters `None` where they do not apply)."""
        settings = dataclasses.asdict(self)
        if not generator.has_noise:
            settings.update(dict.fromkeys(NOISE_OPTIONS))
        elif self.bad_noise_layers is None:  # recorded as the layers it stands for
            default = generator.arch.default_bad_noise_layers
            settings["bad_noise_layers"] = ".".join(map(str, default))
        unused = set(operators.PARAMETER_NAMES) - set(operators.parameters_of(self.operator))
        settings.update(dict.fromkeys(sorted(unused)))
        return settings


def check_applicable(generator: Generator, given: Iterable[str]) -> None:
    """Refuses options that the generator does not have.

    Args:
      generator: the loaded generator.
      given: the option names the user set explicitly.

    Raises:
      ConfigError: naming every given noise/tiling option when the generator has no
        noise maps or style layers (the DCGAN).
    """
    extra = [name for name in NOISE_OPTIONS if name in set(given)]
    if extra and not generator.has_noise:
        flags = ", ".join(f"--{name}" for name in extra)
        verb = "applies" if len(extra) == 1 else "apply"
        raise ConfigError(
            f"{flags} {verb} to StyleGAN generators only; this "
            f"{generator.kind} generator has a single latent and no noise maps. Remove "
            f"{'it' if len(extra) == 1 else 'them'}, or pick a StyleGAN with --generator."
        )


def check_search(search: SearchConfig, generator: Generator) -> None:
    """Checks the settings before any work, so a mistake is not found after the first batch.

    Raises:
      ConfigError: naming the setting and why.
    """
    try:
        losses.parse_loss_str(search.loss_str)
    except ValueError as e:
        raise ConfigError(f"--loss_str {search.loss_str!r}: {e}") from None
    if search.steps < 1:
        raise ConfigError(f"--steps must be >= 1, got {search.steps}")
    if not search.eps > 0:
        raise ConfigError(f"--eps must be > 0, got {search.eps}")
    if search.opt_name not in optim.OPTIMIZERS:
        raise ConfigError(f"--opt_name must be one of {optim.OPTIMIZERS}")
    if search.lr_schedule not in optim.SCHEDULES:
        raise ConfigError(f"--lr_schedule must be one of {optim.SCHEDULES}")
    if search.operator not in set(operators.OperatorName):
        raise ConfigError(f"--operator must be one of {', '.join(operators.OperatorName)}")
    if generator.has_noise:
        given = search.bad_noise_layers
        try:
            layers = (
                generator.arch.default_bad_noise_layers
                if given is None
                else tuple(int(v) for v in given.split(".") if v.strip())
            )
        except ValueError:
            raise ConfigError(
                f"--bad_noise_layers must be '.'-separated layer numbers, "
                f"got {search.bad_noise_layers!r}"
            ) from None
        options = SearchOptions(
            search.noise_type, search.num_trainable_noise_layers, search.tile_latent, layers
        )
        try:
            generator.arch.check_options(options)
        except ValueError as e:
            raise ConfigError(str(e)) from None


def check_operator(search: SearchConfig, generator: Generator, sides: Iterable[int]) -> None:
    """Builds the operator for every input size before any work (a mask of the wrong size
    is found before the first batch).

    Raises:
      ConfigError: naming the operator and the problem.
    """
    for side in sorted(set(sides)):
        search.degradation(side, generator.resolution)


def recorded_settings(record: dict) -> dict:
    """A manifest line's settings, with the settings added since (the operator and its
    parameters) filled in as every earlier line implies: PULSE's bicubic downscale."""
    old = record.get("settings")
    old = dict(old) if isinstance(old, dict) else {}
    if "operator" not in old:
        old.update({"operator": "bicubic", **dict.fromkeys(operators.PARAMETER_NAMES)})
    return old


def settings_diff(old: dict, new: dict) -> str:
    """The settings that differ, as "name old -> new" joined by commas."""
    return ", ".join(f"{k} {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v)
