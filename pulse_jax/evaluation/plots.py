"""Plots of PULSE runs (optional extra: `pip install -e ".[plots]"`, matplotlib).

- `write_l2_curves`: one input, the L2 of every sample over the steps, with the eps line;
- `write_l2_grid`: the same for several inputs, one panel each;
- `write_success_curve`: the fraction of samples that reached eps by each step.

matplotlib is imported when a plot is drawn, so the library works without it; figures
are drawn on `matplotlib.figure.Figure` objects (no pyplot state) and written atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from pulse_jax.files import atomic_write


def available() -> bool:
    """Whether matplotlib (the `plots` extra) is installed."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _save(figure, path: str | os.PathLike) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(buffer.getvalue()))


def _draw_l2(axes, l2: np.ndarray, eps: float, title: str) -> None:
    """l2 [steps, S] on log axes, one line per sample, the eps threshold dashed."""
    steps = np.arange(l2.shape[0])
    for s in range(l2.shape[1]):
        reached = bool(np.min(l2[:, s]) <= eps)
        axes.plot(steps, l2[:, s], lw=1.2, label=f"sample {s} {'✓' if reached else '✗'}")
    axes.axhline(eps, color="black", ls="--", lw=1, label=f"eps {eps:.2g}")
    axes.set_yscale("log")
    axes.set_xlabel("step")
    axes.set_ylabel("L2")
    axes.set_title(title, fontsize=9)


def write_l2_curves(
    path: str | os.PathLike, l2: np.ndarray, eps: float, *, title: str = ""
) -> None:
    """Writes one input's plot: the L2 of every sample over the steps and the eps line.

    Args:
      path: the PNG to write.
      l2: `[steps, S]`, `SolveResult.history["L2"][:, image]`.
      eps: the success threshold (the operator's, `Degradation.success_eps`).
      title: the plot's title.
    """
    figure = _figure(5.0, 3.2)
    axes = figure.add_subplot()
    _draw_l2(axes, np.asarray(l2), eps, title)
    axes.legend(fontsize=7)
    _save(figure, path)


def write_l2_grid(
    path: str | os.PathLike,
    l2: np.ndarray,
    eps: float,
    names: Sequence[str],
    *,
    columns: int = 4,
) -> None:
    """Writes the L2 curves of several inputs, one panel per input.

    Args:
      l2: `[steps, B, S]`.
      eps: the success threshold.
      names: B panel titles.
      columns: panels per row.
    """
    l2 = np.asarray(l2)
    count = l2.shape[1]
    columns = min(columns, count)
    rows = -(-count // columns)
    figure = _figure(3.0 * columns, 2.4 * rows)
    for b in range(count):
        axes = figure.add_subplot(rows, columns, b + 1)
        _draw_l2(axes, l2[:, b], eps, names[b])
        if b == 0:
            axes.legend(fontsize=6)
    _save(figure, path)


def write_success_curve(
    path: str | os.PathLike, curves: Mapping[str, np.ndarray], *, title: str = ""
) -> None:
    """Writes the success-rate curves: per label, the fraction of samples whose L2 had
    reached eps by each step.

    Args:
      curves: label -> `[steps]` fractions in [0, 1].
    """
    figure = _figure(5.0, 3.2)
    axes = figure.add_subplot()
    for label, curve in curves.items():
        curve = np.asarray(curve)
        axes.plot(np.arange(curve.shape[0]), 100.0 * curve, lw=1.5, label=label)
    axes.set_ylim(0, 100)
    axes.set_xlabel("step")
    axes.set_ylabel("samples that reached eps (%)")
    axes.set_title(title, fontsize=9)
    axes.legend(fontsize=7)
    _save(figure, path)
