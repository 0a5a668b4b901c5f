"""The search settings of a launch: `SearchConfig` (everything that decides a result), the
checks that refuse a bad setting before any work, and how settings are recorded and compared
in a manifest line.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from pulse_jax.degrade import operators
from pulse_jax.generators import DEFAULT_GENERATOR
from pulse_jax.generators.base import Generator
from pulse_jax.options import (
    ConfigError,
    Scope,
    SearchMode,
    SearchOptions,
    option,
    option_fields,
    scoped,
)

__all__ = [
    "NOISE_OPTIONS",
    "ConfigError",
    "SearchConfig",
    "check_applicable",
    "check_operator",
    "check_search",
    "recorded_settings",
    "settings_diff",
]

# The options that exist only for generators with noise maps and style layers (StyleGAN).
NOISE_OPTIONS = scoped(Scope.STYLE)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    """Everything that decides a result: the generator, the seed, how inputs are read, and
    the search options (one `SearchOptions` value, handed to `solve` as it is).

    Two results with equal `SearchConfig`s (and the same input, image id and
    sample) are the same result, which is what lets a re-run skip finished work.
    """

    generator: str = option(
        DEFAULT_GENERATOR,
        "A registered generator name (dcgan64: the embedded 64 px face DCGAN) or the path of "
        "a weights file written by `python -m pulse_jax.checkpoints.convert` (e.g. "
        "weights/ffhq1024.npz).",
    )
    seed: int = 0  # the launchers have their own seed flags
    resize: bool = option(
        False,
        "Centre-crop and resize inputs whose size does not divide the generator's resolution "
        "(default: refuse them).",
    )
    options: SearchOptions = SearchOptions()

    def __post_init__(self) -> None:
        if not isinstance(self.options, SearchOptions):
            raise TypeError(f"options must be a SearchOptions, got {type(self.options).__name__}")

    def settings(self, generator: Generator) -> dict:
        """The settings recorded in each manifest line (noise options and operator
        parameters `None` where they do not apply; `bad_noise_layers` as PULSE's string)."""
        options = self.options
        defaults = generator.arch.option_defaults()  # e.g. bad_noise_layers left unset
        applicable = set(_applicable(generator)) - (
            set(operators.PARAMETER_NAMES) - set(operators.parameters_of(options.operator))
        )
        settings: dict[str, Any] = {"generator": self.generator, "seed": self.seed}
        for field in option_fields():
            if field.name == "operator":  # where every manifest line so far records it
                settings["resize"] = self.resize
            value = getattr(options, field.name) if field.name in applicable else None
            if value is None and field.name in applicable:
                value = defaults.get(field.name)
            if field.name == "mode" and value == SearchMode.PULSE:
                continue  # PULSE's lines stay as every line before the modes recorded them
            settings[field.name] = _recorded(field, value)
        return settings


def _applicable(generator: Generator) -> tuple[str, ...]:
    """The option names the generator takes (its declared scopes)."""
    scopes = generator.arch.option_scopes
    return tuple(f.name for f in option_fields() if f.metadata["option"].scope in scopes)


def _recorded(field: dataclasses.Field, value: Any) -> Any:
    """An option's value as a manifest line holds it: plain JSON types, and the option's
    flag string where it has one (`Spec.format`: PULSE's '.'-separated `bad_noise_layers`)."""
    format_ = field.metadata["option"].format
    if format_ is not None and value is not None:
        return format_(value)
    return str(value) if isinstance(value, str) else value


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
    """Checks the settings against the generator before any work, so a mistake is not found
    after the first batch (the generic options are checked when the value is made).

    Raises:
      ConfigError: naming the setting and why (e.g. a noise layer the generator lacks).
    """
    search.options.for_arch(generator.arch)


def check_operator(search: SearchConfig, generator: Generator, sides: Iterable[int]) -> None:
    """Builds the operator for every input size before any work (a mask of the wrong size
    is found before the first batch).

    Raises:
      ConfigError: naming the operator and the problem.
    """
    for side in sorted(set(sides)):
        search.options.degradation(side, generator.resolution)


def recorded_settings(record: dict) -> dict:
    """A manifest line's settings, with the settings added since (the operator and its
    parameters) filled in as every earlier line implies: PULSE's bicubic downscale. (A
    PULSE line records no mode, before the modes and since: `SearchConfig.settings`.)"""
    old = record.get("settings")
    old = dict(old) if isinstance(old, dict) else {}
    if "operator" not in old:
        old.update({"operator": "bicubic", **dict.fromkeys(operators.PARAMETER_NAMES)})
    return old


def settings_diff(old: dict, new: dict) -> str:
    """The settings that differ, as "name old -> new" joined by commas."""
    keys = dict.fromkeys([*new, *old])  # a setting only one side records (a mode) counts too
    return ", ".join(
        f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)
    )
