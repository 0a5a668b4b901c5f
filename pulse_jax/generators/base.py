"""What every generator offers the solver, and the loaded-generator value users hold.

A generator is split in two so that `solve` compiles once per architecture:
  - an *arch*: a small frozen (hashable) dataclass with the static structure and
    pure methods `sample_start`, `trainable`, `sphere_axes`, `render`, passed to
    `jax.jit` as a static argument;
  - its *params*: a pytree of arrays, passed as an ordinary (traced) argument.

The search space of a sample is a pytree "start" (e.g. {"latent", "noise"});
`trainable(options)` marks the leaves that are optimized, `sphere_axes(options)`
gives, for each batched leaf [N, ...], the axes over which its rows' radii are
taken (docs/method.md section 3), and `render(params, variables, options)` turns
batched variables into images in [0, 1] plus the dlatents GEOCROSS needs (or
None where GEOCROSS does not apply).
`prepare(params)` gives the parameters with everything that depends on the
weights alone computed once (scaled and transposed kernels); the search calls it
before its optimization loop, and `render` takes raw or prepared parameters alike.
`Arch` is that interface as a Protocol.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Protocol

import jax
import numpy as np

from pulse_jax.options import Scope, SearchOptions

__all__ = ["Arch", "Generator", "Prepared"]


class Prepared(dict):
    """Parameters as an arch's `prepare` leaves them: the type says so, where raw and
    prepared parameters would otherwise be told apart by their keys. A pytree like a dict
    (the same leaves in the same, sorted-key order)."""


jax.tree_util.register_pytree_with_keys(
    Prepared,
    lambda d: (tuple((jax.tree_util.DictKey(k), d[k]) for k in sorted(d)), tuple(sorted(d))),
    lambda keys, values: Prepared(zip(keys, values, strict=True)),
)


class Arch(Protocol):
    """What the solver needs of a generator's static structure (hashable: a jit static).

    `option_scopes` declares which options the generator takes (`options.Scope`: the
    generic ones, and those of noise maps and style layers where it has them) and
    `option_defaults()` its own defaults for options left unset (None), e.g.
    `{"bad_noise_layers": (17,)}`; `SearchOptions.for_arch` applies both.
    """

    resolution: int
    option_scopes: frozenset[Scope]

    def option_defaults(self) -> dict[str, Any]: ...

    def check_options(self, options: SearchOptions) -> None: ...

    def prepare(self, params: dict) -> dict: ...  # parts it prepares become `Prepared`

    def sample_start(self, key: jax.Array, options: SearchOptions) -> dict: ...

    def trainable(self, options: SearchOptions) -> dict: ...

    def sphere_axes(self, options: SearchOptions) -> dict: ...

    def render(self, params: dict, variables: dict, options: SearchOptions) -> tuple: ...

    def synthesize(self, params: dict, x: jax.Array, *noise: Any) -> jax.Array: ...


@dataclasses.dataclass(frozen=True, eq=False)
class Generator:
    """A loaded generator: its static arch, its parameters and where they came from.

    Attributes:
      kind: registered kind ("stylegan", "stylegan2", "dcgan").
      arch: the static structure (hashable), whose methods the solver calls.
      params: pytree of arrays (for StyleGAN: "synthesis", "mapping", "gaussian_fit").
      provenance: source files and checksums recorded by the converter.
    """

    kind: str
    arch: Arch
    params: dict
    provenance: dict = dataclasses.field(default_factory=dict)

    @property
    def resolution(self) -> int:
        return self.arch.resolution

    @property
    def num_layers(self) -> int:
        """Style layers L (StyleGAN); 1 for a generator with a single latent."""
        return getattr(self.arch, "num_layers", 1)

    @property
    def has_noise(self) -> bool:
        """Whether the generator has noise maps and style rows (its declared option scopes)."""
        return Scope.STYLE in self.arch.option_scopes

    @property
    def gaussian_fit(self) -> dict[str, np.ndarray] | None:
        fit = self.params.get("gaussian_fit")
        return None if fit is None else {k: np.asarray(v) for k, v in fit.items()}

    def map(self, z: jax.Array) -> jax.Array:
        """StyleGAN mapping network z [B, 512] -> w [B, 512] (untruncated)."""
        if "mapping" not in self.params:
            raise ValueError(f"this {self.kind} generator has no mapping network")
        return _jit_map(self.arch, self.params["mapping"], z)

    def synthesize(self, dlatents: jax.Array, noise=None) -> jax.Array:
        """StyleGAN: dlatents [B, L, 512] and L noise maps [B, r, r, 1] -> raw image [B, R, R, 3].

        StyleGAN2: ws [B, num_ws, w_dim] and its 2 log2(R) - 3 noise maps [B, r, r, 1], or
        None (no noise) -> raw image. DCGAN: z [B, 100] -> raw image [B, 64, 64, 3]. Raw
        output is roughly [-1, 1].
        """
        if self.has_noise:
            return _jit_synthesize(self.arch, self.params["synthesis"], dlatents, noise)
        return _jit_synthesize(self.arch, self.params, dlatents, None)

    def render(self, variables: dict, options: SearchOptions | None = None):
        """Batched search variables -> (images [N, R, R, 3] in [0, 1], dlatents or None)."""
        return _jit_render(self.arch, self.params, variables, options or SearchOptions())

    def __repr__(self) -> str:
        return f"Generator(kind={self.kind!r}, arch={self.arch!r})"


@functools.partial(jax.jit, static_argnums=0)
def _jit_map(arch, params, z):
    return arch.map(params, z)


def _synthesize(arch, params, x, noise):
    return arch.synthesize(params, x, noise) if noise is not None else arch.synthesize(params, x)


_jit_synthesize = jax.jit(_synthesize, static_argnums=0)
_jit_render = jax.jit(lambda arch, params, v, o: arch.render(params, v, o), static_argnums=(0, 3))
