"""Image metrics of the evaluation: PSNR, SSIM and the diversity of samples.

Images are float arrays `[..., H, W, C]` with values in [0, 1] (data range 1).
"""

from __future__ import annotations

import functools

import numpy as np

# PSNR of identical images is infinite; it is reported as this cap so that every
# figure is a finite JSON number.
PSNR_CAP_DB = 100.0
# SSIM constants of Wang, Bovik, Sheikh and Simoncelli (IEEE TIP 2004): K1, K2, and the
# 11 x 11 Gaussian window of standard deviation 1.5.
SSIM_K1, SSIM_K2 = 0.01, 0.03
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


def mse(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Mean squared error over the last three axes `[H, W, C]`.

    Args:
      a, b: `[..., H, W, C]`.
      mask: optional `[H, W]` weights (1 = the pixel counts, 0 = it does not); the mean is
        over the pixels that count.

    Returns:
      `[...]`.
    """
    d = (np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2
    if mask is None:
        return d.mean(axis=(-3, -2, -1))
    w = np.asarray(mask, np.float64)[:, :, None]
    return (d * w).sum(axis=(-3, -2, -1)) / (w.sum() * d.shape[-1])


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Peak signal-to-noise ratio in dB, `10 log10(1 / mse)` (data range 1), capped at
    `PSNR_CAP_DB` (identical images).

    Returns:
      `[...]` over the leading axes of `a` and `b`.
    """
    error = mse(a, b, mask)
    with np.errstate(divide="ignore"):
        value = 10.0 * np.log10(1.0 / error)
    return np.minimum(value, PSNR_CAP_DB)


@functools.cache
def _gaussian_window() -> np.ndarray:
    x = np.arange(SSIM_WINDOW) - (SSIM_WINDOW - 1) / 2
    g = np.exp(-(x**2) / (2 * SSIM_SIGMA**2))
    return g / g.sum()


def _filter_valid(x: np.ndarray) -> np.ndarray:
    """The normalised Gaussian window over every position where it fits: `[..., H, W, C]`
    -> `[..., H - 10, W - 10, C]` (separable)."""
    g = _gaussian_window()
    n = SSIM_WINDOW
    h, w = x.shape[-3], x.shape[-2]
    rows = sum(g[i] * x[..., i : h - n + 1 + i, :, :] for i in range(n))
    return sum(g[i] * rows[..., :, i : w - n + 1 + i, :] for i in range(n))


def ssim(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Structural similarity (Wang et al. 2004), the standard Gaussian-window definition.

    Local means, variances and covariance are taken with the 11 x 11 Gaussian window of
    standard deviation 1.5 (normalised, population statistics), at every position where
    the window fits inside the image ("valid"); the SSIM map
    `(2 mu_a mu_b + C1)(2 s_ab + C2) / ((mu_a**2 + mu_b**2 + C1)(s_a**2 + s_b**2 + C2))`,
    `C1 = (0.01)**2`, `C2 = (0.03)**2` (data range 1), is averaged over positions and
    channels. This is the reference MATLAB `ssim_index` per channel, and scikit-image's
    `structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1)`.

    Args:
      a, b: `[..., H, W, C]` (broadcast against each other), H and W at least 11.

    Returns:
      `[...]`.
    """
    a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
    if a.ndim < 3 or min(a.shape[-3:-1]) < SSIM_WINDOW:
        raise ValueError(f"ssim needs images of at least 11 x 11, got {a.shape}")
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    mu_a, mu_b = _filter_valid(a), _filter_valid(b)
    var_a = _filter_valid(a * a) - mu_a**2
    var_b = _filter_valid(b * b) - mu_b**2
    cov = _filter_valid(a * b) - mu_a * mu_b
    value = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / (
        (mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2)
    )
    return value.mean(axis=(-3, -2, -1))


def mean_pairwise_distance(samples: np.ndarray) -> float:
    """The diversity of samples: the mean, over every pair, of the root-mean-square pixel
    distance between the two, `[S, H, W, C]` -> a float (0 for fewer than two samples)."""
    samples = np.asarray(samples, np.float64)
    count = samples.shape[0]
    if count < 2:
        return 0.0
    distances = [
        np.sqrt(np.mean((samples[i] - samples[j]) ** 2))
        for i in range(count)
        for j in range(i + 1, count)
    ]
    return float(np.mean(distances))
