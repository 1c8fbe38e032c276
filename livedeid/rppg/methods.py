"""Pulse extraction: an RGB skin trace ``(n, 3)`` becomes a pulse ``(n,)``.

:func:`pos` (Wang et al. 2017, "Algorithmic principles of remote PPG"), :func:`chrom`
(de Haan & Jeanne 2013, "Robust pulse rate from chrominance-based rPPG") and
:func:`green` (Verkruysse et al. 2008). All detrend and band-pass to 0.7-3.5 Hz
(42-210 bpm) and share one sign convention: the output rises with blood volume.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import signal
from scipy.ndimage import uniform_filter1d

from livedeid.rppg.spectrum import bandpass

EPS = 1e-9


def window_len(fs: float, seconds: float = 1.6) -> int:
    # 1.6 s covers at least one cardiac cycle at >= 40 bpm (Wang et al., sec. IV).
    return max(int(round(seconds * fs)), 2)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 2 or rgb.shape[1] != 3:
        raise ValueError(f"expected an RGB trace of shape (n, 3), got {rgb.shape}")
    if not np.all(np.isfinite(rgb)):
        raise ValueError("RGB trace contains NaN/inf: fill gaps before extracting the pulse")
    return rgb


# POS's projection plane, orthogonal to the skin tone in the normalised RGB space.
POS_PROJECTION = np.array([[0.0, 1.0, -1.0], [-2.0, 1.0, 1.0]])


def pos(rgb: np.ndarray, fs: float, filtered: bool = True) -> np.ndarray:
    """Plane-Orthogonal-to-Skin pulse (Wang, den Brinker, Stuijk, de Haan 2017).

    Sliding 1.6 s windows (stride 1 frame): each is divided by its temporal mean,
    projected on ``[[0, 1, -1], [-2, 1, 1]]``, the two projections are combined with
    ``alpha = std(S1) / std(S2)`` and the zero-mean result is overlap-added. Without
    ``filtered`` the overlap-added pulse is returned before the band-pass.
    """
    rgb = _check_rgb(rgb)
    n = len(rgb)
    win = min(window_len(fs), n)
    windows = np.lib.stride_tricks.sliding_window_view(rgb, win, axis=0)  # (m, 3, win)
    cn = windows / (windows.mean(axis=2, keepdims=True) + EPS)            # temporal normalisation
    s = np.einsum("pc,mcw->mpw", POS_PROJECTION, cn)                     # projection plane
    s1, s2 = s[:, 0], s[:, 1]
    alpha = s1.std(axis=1) / (s2.std(axis=1) + EPS)                       # alpha tuning
    h = s1 + alpha[:, None] * s2
    h -= h.mean(axis=1, keepdims=True)
    out = np.zeros(n)
    for k in range(win):  # overlap-add: window m covers samples m .. m + win - 1
        out[k:k + len(h)] += h[:, k]
    # POS's projection points along +[0.33, 0.77, 0.53] intensity change; more blood
    # means less reflected light, so the sign is flipped to rise with blood volume.
    out = -out
    return bandpass(out, fs) if filtered else out


def chrom(rgb: np.ndarray, fs: float) -> np.ndarray:
    """Chrominance pulse (de Haan & Jeanne 2013).

    ``X = 3R - 2G``, ``Y = 1.5R + G - 1.5B`` on the mean-normalised trace, both
    band-passed; in 1.6 s Hann windows at 50 % overlap ``S = Xf - (std Xf / std Yf) Yf``
    and the windows are overlap-added (Hann at 50 % sums to a constant).
    """
    rgb = _check_rgb(rgb)
    n = len(rgb)
    win = min(window_len(fs), n)
    win += win % 2
    # Each sample is normalised by the mean of the window around it, the moving form of
    # the paper's per-interval normalisation.
    cn = rgb / (uniform_filter1d(rgb, size=min(win, n), axis=0, mode="nearest") + EPS)
    x = 3.0 * cn[:, 0] - 2.0 * cn[:, 1]
    y = 1.5 * cn[:, 0] + cn[:, 1] - 1.5 * cn[:, 2]
    xf, yf = bandpass(x, fs), bandpass(y, fs)
    if n <= win:
        s = xf - (xf.std() / (yf.std() + EPS)) * yf
        return bandpass(s, fs)
    hann = signal.windows.hann(win, sym=False)
    step = win // 2
    out = np.zeros(n)
    weight = np.zeros(n)
    for start in range(0, n - step, step):
        sl = slice(start, min(start + win, n))
        xw, yw = xf[sl], yf[sl]
        alpha = xw.std() / (yw.std() + EPS)
        out[sl] += (xw - alpha * yw) * hann[: len(xw)]
        weight[sl] += hann[: len(xw)]
    # Inside the signal the Hann windows sum to 1; only the first and last half windows
    # see a single taper, which this division undoes (it is exact there, not a gain on noise).
    out = np.divide(out, weight, out=np.zeros(n), where=weight > 1e-6)
    return bandpass(out, fs)


def green(rgb: np.ndarray, fs: float) -> np.ndarray:
    """Green-channel pulse (Verkruysse et al. 2008): the baseline the others must beat."""
    rgb = _check_rgb(rgb)
    g = rgb[:, 1] / (rgb[:, 1].mean() + EPS)
    return bandpass(-g, fs)  # haemoglobin absorbs green: less light = more blood


METHODS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {"pos": pos, "chrom": chrom, "green": green}


def extract_pulse(rgb: np.ndarray, fs: float, method: str = "pos") -> np.ndarray:
    try:
        fn = METHODS[method.lower()]
    except KeyError:
        raise ValueError(f"unknown rPPG method {method!r}; choose from {sorted(METHODS)}") from None
    return fn(rgb, fs)
