"""Remote photoplethysmography: skin colour trace -> pulse waveform -> heart rate.

Pipeline (offline and live share every step):

1. :func:`mean_skin_rgb` averages the skin of the forehead and both cheeks, located with
   MediaPipe face-mesh landmarks (eyes, brows, nostrils and mouth cut out: they move on
   their own and carry no pulse).
2. A method turns the RGB trace ``(n, 3)`` into a pulse ``(n,)``: :func:`pos`
   (Wang et al. 2017, "Algorithmic principles of remote PPG"), :func:`chrom`
   (de Haan & Jeanne 2013, "Robust pulse rate from chrominance-based rPPG") or
   :func:`green` (Verkruysse et al. 2008). All detrend and band-pass to 0.7-3.5 Hz
   (42-210 bpm) and share one sign convention: the output rises with blood volume.
3. :func:`estimate_hr` reads the spectral peak with sub-bin interpolation and grades it
   by de Haan's SNR.

:class:`StreamingHR` runs the same steps causally on a sliding window for live use,
:func:`pos_torch` is a differentiable POS for training losses.
Only numpy, SciPy and OpenCV are needed; torch is imported inside the torch functions.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Callable, Iterable

import cv2
import numpy as np
from scipy import signal
from scipy.ndimage import uniform_filter1d

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from livedeid.core.records import Frame

# --------------------------------------------------------------------------------------
# Skin region from MediaPipe face-mesh landmarks (indices of the 478-point refined mesh).
# Polygons are listed in boundary order; an entry ``(a, b, t)`` is the point a fraction
# ``t`` of the way from landmark ``a`` to ``b``. The forehead's upper edge lies halfway
# between the 69-108-151-337-299 row and the hairline row 67-109-10-338-297, high enough
# for a useful area yet below where fringes usually fall; the cheeks lie between the
# lower-eyelid crease, the side of the nose and mouth-corner height, the most perfused
# and least articulated skin of the face.
# --------------------------------------------------------------------------------------
FOREHEAD = (9, 107, 66, 105, (104, 103, 0.5), (69, 67, 0.5), (108, 109, 0.5), (151, 10, 0.5),
            (337, 338, 0.5), (299, 297, 0.5), (333, 332, 0.5), 334, 296, 336)
RIGHT_CHEEK = (116, 117, 118, 119, 100, 142, 203, 206, 207, 187, 147, 123)  # image left
LEFT_CHEEK = (345, 346, 347, 348, 329, 371, 423, 426, 427, 411, 376, 352)   # image right
SKIN_POLYGONS = (FOREHEAD, RIGHT_CHEEK, LEFT_CHEEK)

RIGHT_EYE = (33, 246, 161, 160, 159, 158, 157, 173, 133, 155, 154, 153, 145, 144, 163, 7)
LEFT_EYE = (263, 466, 388, 387, 386, 385, 384, 398, 362, 382, 381, 380, 374, 373, 390, 249)
RIGHT_BROW = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46)
LEFT_BROW = (300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
LIPS = (61, 185, 40, 39, 37, 0, 267, 269, 270, 409, 291, 375, 321, 405, 314, 17, 84, 181, 91, 146)
NOSE_BASE = (48, 115, 220, 45, 4, 275, 440, 344, 278, 294, 327, 326, 2, 97, 98, 64)
FACE_OVAL = (
    10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377,
    152, 148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109,
)
# Exclusions are grown about their centroid: with head turns or landmark jitter the skin
# polygons can touch these parts, whose own motion (blinks, speech) swamps the pulse.
EXCLUSIONS = ((RIGHT_EYE, 1.6), (LEFT_EYE, 1.6), (RIGHT_BROW, 1.3), (LEFT_BROW, 1.3),
              (LIPS, 1.25), (NOSE_BASE, 1.15))

_SHIFT = 4  # fillPoly fractional bits: landmarks are sub-pixel, masks should be too


def polygon_points(landmarks: np.ndarray, poly: tuple) -> np.ndarray:
    """``(k, 2)`` points of a polygon spec (landmark indices or ``(a, b, t)`` blends)."""
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    out = np.empty((len(poly), 2))
    for j, p in enumerate(poly):
        if isinstance(p, tuple):
            a, b, t = p
            out[j] = lm[a] + (lm[b] - lm[a]) * t
        else:
            out[j] = lm[p]
    return out


def _scaled(poly: np.ndarray, factor: float) -> np.ndarray:
    c = poly.mean(axis=0)
    return c + (poly - c) * factor


def _fill(mask: np.ndarray, polys: list[np.ndarray], value: int) -> None:
    pts = [np.round(p * (1 << _SHIFT)).astype(np.int32) for p in polys]
    cv2.fillPoly(mask, pts, value, lineType=cv2.LINE_8, shift=_SHIFT)


def _roi_in_box(landmarks: np.ndarray, shape_hw: tuple[int, int]) -> tuple[int, int, np.ndarray] | None:
    """Skin mask rasterised only inside the skin polygons' bounding box (clipped to the
    image): ``(x0, y0, mask uint8)`` or None when the box is empty."""
    lm = np.asarray(landmarks, dtype=np.float64)[:, :2]
    h, w = int(shape_hw[0]), int(shape_hw[1])
    polys = [polygon_points(lm, p) for p in SKIN_POLYGONS]
    roi = np.concatenate(polys)
    if not np.all(np.isfinite(roi)):
        return None
    x0 = max(int(math.floor(roi[:, 0].min())), 0)
    y0 = max(int(math.floor(roi[:, 1].min())), 0)
    x1 = min(int(math.ceil(roi[:, 0].max())) + 1, w)
    y1 = min(int(math.ceil(roi[:, 1].max())) + 1, h)
    if x1 <= x0 or y1 <= y0:
        return None
    off = np.array([x0, y0], dtype=np.float64)
    mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    _fill(mask, [p - off for p in polys], 255)
    _fill(mask, [_scaled(lm[list(p)], f) - off for p, f in EXCLUSIONS], 0)
    return x0, y0, mask


def skin_mask(landmarks: np.ndarray, shape_hw: tuple[int, int]) -> np.ndarray:
    """Boolean ``(H, W)`` mask of forehead and cheek skin for one face's landmarks."""
    out = np.zeros((int(shape_hw[0]), int(shape_hw[1])), dtype=bool)
    box = _roi_in_box(landmarks, shape_hw)
    if box is not None:
        x0, y0, m = box
        out[y0:y0 + m.shape[0], x0:x0 + m.shape[1]] = m > 0
    return out


def mean_skin_rgb(image_bgr: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """Mean skin colour ``(3,)`` as **RGB** float in the image's units (0-255 for uint8).

    All NaN when the skin region is empty (face off-frame); callers treat that as
    "no face this frame".
    """
    box = _roi_in_box(landmarks, image_bgr.shape[:2])
    if box is None:
        return np.full(3, np.nan)
    x0, y0, m = box
    if not m.any():
        return np.full(3, np.nan)
    crop = image_bgr[y0:y0 + m.shape[0], x0:x0 + m.shape[1]]
    b, g, r, _ = cv2.mean(crop, mask=m)
    return np.array([r, g, b], dtype=np.float64)


# --------------------------------------------------------------------------------------
# Filtering
# --------------------------------------------------------------------------------------
BAND_HZ = (0.7, 3.5)
FILTER_ORDER = 4
_EPS = 1e-9


@lru_cache(maxsize=32)
def _band_sos(fs: float, lo: float, hi: float, order: int) -> np.ndarray:
    nyq = fs / 2.0
    hi = min(hi, 0.95 * nyq)  # low frame rates: keep the filter realisable
    return signal.butter(order, [lo, hi], btype="bandpass", fs=fs, output="sos")


def bandpass(x: np.ndarray, fs: float, band: tuple[float, float] = BAND_HZ, axis: int = 0) -> np.ndarray:
    """Linear detrend, then zero-phase Butterworth band-pass (``sosfiltfilt``).

    Both steps are linear in ``x``; :func:`pos_torch` relies on that to reproduce this
    exact filter as a matrix.
    """
    x = np.asarray(x, dtype=np.float64)
    n = x.shape[axis]
    if n < 3:
        return np.zeros_like(x)
    x = signal.detrend(x, axis=axis, type="linear")
    sos = _band_sos(float(fs), float(band[0]), float(band[1]), FILTER_ORDER)
    default_pad = 3 * (2 * len(sos) + 1 - min((sos[:, 2] == 0).sum(), (sos[:, 5] == 0).sum()))
    return signal.sosfiltfilt(sos, x, axis=axis, padlen=min(default_pad, n - 1))


def _win_len(fs: float, seconds: float = 1.6) -> int:
    # 1.6 s covers at least one cardiac cycle at >= 40 bpm (Wang et al., sec. IV).
    return max(int(round(seconds * fs)), 2)


def _check_rgb(rgb: np.ndarray) -> np.ndarray:
    rgb = np.asarray(rgb, dtype=np.float64)
    if rgb.ndim != 2 or rgb.shape[1] != 3:
        raise ValueError(f"expected an RGB trace of shape (n, 3), got {rgb.shape}")
    if not np.all(np.isfinite(rgb)):
        raise ValueError("RGB trace contains NaN/inf: fill gaps before extracting the pulse")
    return rgb


# --------------------------------------------------------------------------------------
# Pulse extraction
# --------------------------------------------------------------------------------------
_POS_P = np.array([[0.0, 1.0, -1.0], [-2.0, 1.0, 1.0]])


def _pos_raw(rgb: np.ndarray, fs: float) -> np.ndarray:
    n = len(rgb)
    win = min(_win_len(fs), n)
    windows = np.lib.stride_tricks.sliding_window_view(rgb, win, axis=0)  # (m, 3, win)
    cn = windows / (windows.mean(axis=2, keepdims=True) + _EPS)           # temporal normalisation
    s = np.einsum("pc,mcw->mpw", _POS_P, cn)                               # projection plane
    s1, s2 = s[:, 0], s[:, 1]
    alpha = s1.std(axis=1) / (s2.std(axis=1) + _EPS)                      # alpha tuning
    h = s1 + alpha[:, None] * s2
    h -= h.mean(axis=1, keepdims=True)
    out = np.zeros(n)
    for k in range(win):  # overlap-add: window m covers samples m .. m + win - 1
        out[k:k + len(h)] += h[:, k]
    # POS's projection points along +[0.33, 0.77, 0.53] intensity change; more blood
    # means less reflected light, so the sign is flipped to rise with blood volume.
    return -out


def pos(rgb: np.ndarray, fs: float) -> np.ndarray:
    """Plane-Orthogonal-to-Skin pulse (Wang, den Brinker, Stuijk, de Haan 2017).

    Sliding 1.6 s windows (stride 1 frame): each is divided by its temporal mean,
    projected on ``[[0, 1, -1], [-2, 1, 1]]``, the two projections are combined with
    ``alpha = std(S1) / std(S2)`` and the zero-mean result is overlap-added.
    """
    rgb = _check_rgb(rgb)
    return bandpass(_pos_raw(rgb, fs), fs)


def chrom(rgb: np.ndarray, fs: float) -> np.ndarray:
    """Chrominance pulse (de Haan & Jeanne 2013).

    ``X = 3R - 2G``, ``Y = 1.5R + G - 1.5B`` on the mean-normalised trace, both
    band-passed; in 1.6 s Hann windows at 50 % overlap ``S = Xf - (std Xf / std Yf) Yf``
    and the windows are overlap-added (Hann at 50 % sums to a constant).
    """
    rgb = _check_rgb(rgb)
    n = len(rgb)
    win = min(_win_len(fs), n)
    win += win % 2
    # Each sample is normalised by the mean of the window around it, the moving form of
    # the paper's per-interval normalisation.
    cn = rgb / (uniform_filter1d(rgb, size=min(win, n), axis=0, mode="nearest") + _EPS)
    x = 3.0 * cn[:, 0] - 2.0 * cn[:, 1]
    y = 1.5 * cn[:, 0] + cn[:, 1] - 1.5 * cn[:, 2]
    xf, yf = bandpass(x, fs), bandpass(y, fs)
    if n <= win:
        s = xf - (xf.std() / (yf.std() + _EPS)) * yf
        return bandpass(s, fs)
    hann = signal.windows.hann(win, sym=False)
    step = win // 2
    out = np.zeros(n)
    weight = np.zeros(n)
    for start in range(0, n - step, step):
        sl = slice(start, min(start + win, n))
        xw, yw = xf[sl], yf[sl]
        alpha = xw.std() / (yw.std() + _EPS)
        out[sl] += (xw - alpha * yw) * hann[: len(xw)]
        weight[sl] += hann[: len(xw)]
    # Inside the signal the Hann windows sum to 1; only the first and last half windows
    # see a single taper, which this division undoes (it is exact there, not a gain on noise).
    out = np.divide(out, weight, out=np.zeros(n), where=weight > 1e-6)
    return bandpass(out, fs)


def green(rgb: np.ndarray, fs: float) -> np.ndarray:
    """Green-channel pulse (Verkruysse et al. 2008): the baseline the others must beat."""
    rgb = _check_rgb(rgb)
    g = rgb[:, 1] / (rgb[:, 1].mean() + _EPS)
    return bandpass(-g, fs)  # haemoglobin absorbs green: less light = more blood


METHODS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {"pos": pos, "chrom": chrom, "green": green}


def extract_pulse(rgb: np.ndarray, fs: float, method: str = "pos") -> np.ndarray:
    try:
        fn = METHODS[method.lower()]
    except KeyError:
        raise ValueError(f"unknown rPPG method {method!r}; choose from {sorted(METHODS)}") from None
    return fn(rgb, fs)


# --------------------------------------------------------------------------------------
# Heart rate from the spectrum
# --------------------------------------------------------------------------------------
# Quality grades. de Haan's SNR alone cannot be graded with fixed thresholds: how much
# of the band the "signal" bins take depends on the window length (wider bins for short
# windows) and on whether the harmonic is in band, so band-passed white noise already
# scores ~-2 dB at 5 s but ~-6 dB at 20 s. The grade therefore uses the SNR *above the
# white-noise floor* (the SNR a flat spectrum would give with the same bins):
#   good >= floor + 12 dB, fair >= floor + 10 dB, else poor.
# Measured on this estimator with 2000 band-passed noise windows each of 5, 10 and 20 s:
# white noise reaches 'fair' in <= 0.2 % of windows and 'good' in <= 0.05 %; brown
# (1/f^2, drift-like) noise reaches 'fair' in <= 1.7 % and 'good' in <= 0.1 %. A clean
# pulse scores about +12 dB at 5 s and +18 dB at >= 10 s; livedeid.io.synthetic clips of real
# faces at default settings +14..+18 dB in 10 s windows (shown 100 % of the time), but
# harsh ones (0.3 % pulse, JPEG 70, 4-level noise, 3 % flicker, strong motion, 640x360)
# mostly grade 'poor' even where the peak is right: the grade errs on hiding numbers.
# 'poor' readings are never shown as a number.
SNR_GOOD_EXCESS_DB = 12.0
SNR_FAIR_EXCESS_DB = 10.0
SNR_HALF_WIDTH_HZ = 0.1


def quality_from_snr(snr_db: float, floor_db: float) -> str:
    excess = snr_db - floor_db
    if not np.isfinite(excess) or excess < SNR_FAIR_EXCESS_DB:
        return "poor"
    return "good" if excess >= SNR_GOOD_EXCESS_DB else "fair"


@dataclass
class HRResult:
    bpm: float               # spectral peak in the band (always filled; check ``quality``)
    snr_db: float            # de Haan's SNR: fundamental + first harmonic vs rest of band
    quality: str             # 'good' | 'fair' | 'poor' (see quality_from_snr)
    freqs: np.ndarray = field(repr=False)  # Hz, within the band
    power: np.ndarray = field(repr=False)  # periodogram, normalised to peak 1
    floor_db: float = float("nan")         # SNR that white noise would have with these bins

    @property
    def freqs_bpm(self) -> np.ndarray:
        return self.freqs * 60.0


def estimate_hr(pulse: np.ndarray, fs: float, band: tuple[float, float] = BAND_HZ,
                resolution_hz: float = 1.0 / 240.0) -> HRResult:
    """Heart rate from the Hann-windowed periodogram of ``pulse``.

    The periodogram is zero-padded to a grid of ``resolution_hz`` (0.25 bpm), which
    samples the continuous spectrum without adding information, and the peak is refined
    by a parabola through the log power of its two neighbours.

    SNR follows de Haan & Jeanne 2013: power within +-``SNR_HALF_WIDTH_HZ`` of the peak
    and of its first harmonic against the rest of the band; the quality grade uses its
    excess over the white-noise floor (see :func:`quality_from_snr`). For windows shorter than
    10 s the half-width grows to ``1/T`` (one Rayleigh bin) - the window's own main lobe
    is that wide, and counting it as noise would penalise short windows for nothing.
    """
    x = np.asarray(pulse, dtype=np.float64)
    n = len(x)
    if n < 8 or not np.all(np.isfinite(x)):
        empty = np.zeros(0)
        return HRResult(float("nan"), float("-inf"), "poor", empty, empty)  # too short to judge
    x = x - x.mean()
    nfft = max(int(2 ** math.ceil(math.log2(max(fs / resolution_hz, n)))), n)
    spec = np.abs(np.fft.rfft(x * signal.windows.hann(n, sym=False), nfft)) ** 2
    f = np.fft.rfftfreq(nfft, 1.0 / fs)
    lo, hi = band[0], min(band[1], fs / 2.0)
    inb = (f >= lo) & (f <= hi)
    idx = np.flatnonzero(inb)
    fb, pb = f[inb], spec[inb]
    if pb.max() <= 0:
        return HRResult(float("nan"), float("-inf"), "poor", fb, pb)
    k = int(np.argmax(pb))
    f_peak = fb[k]
    gi = idx[k]
    if 0 < k < len(pb) - 1:  # parabolic interpolation on log power
        a, b, c = np.log(spec[gi - 1:gi + 2] + 1e-300)
        den = a - 2 * b + c
        if den < 0:
            f_peak = f[gi] + 0.5 * (a - c) / den * (f[1] - f[0])
    half = max(SNR_HALF_WIDTH_HZ, fs / n)
    sig = (np.abs(fb - f_peak) <= half) | (np.abs(fb - 2 * f_peak) <= half)
    p_sig, p_noise = pb[sig].sum(), pb[~sig].sum()
    snr = 10.0 * math.log10(p_sig / p_noise) if p_noise > 0 else float("inf")
    n_sig = int(sig.sum())
    floor = 10.0 * math.log10(n_sig / (len(sig) - n_sig)) if n_sig < len(sig) else float("inf")
    return HRResult(float(f_peak * 60.0), float(snr), quality_from_snr(snr, floor), fb,
                    pb / pb.max(), float(floor))


# --------------------------------------------------------------------------------------
# Live: causal sliding-window heart rate
# --------------------------------------------------------------------------------------
@dataclass
class HRReading:
    bpm: float | None        # None unless quality is 'good' or 'fair': never a guess shown as a number
    snr_db: float
    quality: str             # 'good' | 'fair' | 'poor'
    waveform: np.ndarray = field(repr=False)    # band-passed pulse over the analysed window
    waveform_t: np.ndarray = field(repr=False)  # timestamps (s, the caller's clock) of ``waveform``
    freqs: np.ndarray = field(repr=False)       # Hz
    power: np.ndarray = field(repr=False)       # normalised to peak 1
    timestamp: float         # time of the newest sample used
    signal_s: float = 0.0    # seconds of usable signal behind this reading
    peak_bpm: float | None = None  # raw spectral peak even when poor: diagnostics only, not for display


class StreamingHR:
    """Causal heart rate from per-frame skin colours, for live use on output frames.

    ``push(timestamp, rgb)`` takes one frame's mean skin RGB (None or NaN when no face).
    Timestamps may be irregular or jittered: the newest ``window_s`` seconds are linearly
    resampled onto a uniform ``resample_hz`` grid before the pulse is extracted. Gaps
    without a face longer than ``max_gap_s`` restart the window (interpolating across
    them would invent a signal); shorter gaps are bridged. A new :attr:`reading` is made
    at most every ``1 / update_hz`` seconds of stream time once ``min_s`` seconds of
    signal exist. No threads: call it from whichever thread owns the frames.
    """

    def __init__(self, method: str = "pos", window_s: float = 10.0, update_hz: float = 1.0,
                 min_s: float = 5.0, resample_hz: float = 30.0, max_gap_s: float = 0.5):
        if method.lower() not in METHODS:
            raise ValueError(f"unknown rPPG method {method!r}; choose from {sorted(METHODS)}")
        if not (0 < min_s <= window_s):
            raise ValueError("need 0 < min_s <= window_s")
        self.method = method.lower()
        self.window_s, self.update_hz, self.min_s = float(window_s), float(update_hz), float(min_s)
        self.resample_hz, self.max_gap_s = float(resample_hz), float(max_gap_s)
        self._t: deque[float] = deque()
        self._rgb: deque[np.ndarray] = deque()
        self._last_face_t: float | None = None
        self._last_t: float | None = None
        self._last_update: float | None = None
        self._reading: HRReading | None = None

    @property
    def reading(self) -> HRReading | None:
        """Latest reading; None until the first frame has been pushed."""
        return self._reading

    def reset(self) -> None:
        self._t.clear()
        self._rgb.clear()
        self._last_face_t = self._last_t = self._last_update = None
        self._reading = None

    def push(self, timestamp: float, rgb: np.ndarray | None) -> HRReading | None:
        """Add one frame; returns the (possibly unchanged) latest reading."""
        t = float(timestamp)
        if self._last_t is not None and t <= self._last_t:
            if t < self._last_t - 1.0:  # the clock jumped back (new source): start over
                self.reset()
            else:
                return self._reading     # duplicate or reordered frame: ignore it
        self._last_t = t
        face = rgb is not None and np.all(np.isfinite(rgb))
        if face:
            if self._last_face_t is not None and t - self._last_face_t > self.max_gap_s:
                self._t.clear()
                self._rgb.clear()
            self._t.append(t)
            self._rgb.append(np.asarray(rgb, dtype=np.float64).reshape(3))
            self._last_face_t = t
        while self._t and self._t[0] < t - self.window_s:
            self._t.popleft()
            self._rgb.popleft()
        if self._last_update is None or t - self._last_update >= 1.0 / self.update_hz - 1e-9:
            self._last_update = t
            self._reading = self._compute(t)
        return self._reading

    def _compute(self, now: float) -> HRReading:
        empty = np.zeros(0)
        fresh = self._last_face_t is not None and now - self._last_face_t <= self.max_gap_s
        span = (self._t[-1] - self._t[0]) if len(self._t) > 1 else 0.0
        if not fresh or span < self.min_s:
            return HRReading(None, float("-inf"), "poor", empty, empty, empty, empty, now,
                             signal_s=span if fresh else 0.0)
        ts = np.fromiter(self._t, dtype=np.float64, count=len(self._t))
        rgb = np.stack(self._rgb)
        n = int(math.floor(span * self.resample_hz)) + 1
        grid = ts[-1] - (n - 1 - np.arange(n)) / self.resample_hz  # ends on the newest sample
        uni = np.stack([np.interp(grid, ts, rgb[:, c]) for c in range(3)], axis=1)
        wave = extract_pulse(uni, self.resample_hz, self.method)
        res = estimate_hr(wave, self.resample_hz)
        shown = res.bpm if res.quality != "poor" and np.isfinite(res.bpm) else None
        return HRReading(shown, res.snr_db, res.quality, wave, grid, res.freqs, res.power,
                         float(ts[-1]), signal_s=span,
                         peak_bpm=res.bpm if np.isfinite(res.bpm) else None)


# --------------------------------------------------------------------------------------
# Differentiable POS (training losses)
# --------------------------------------------------------------------------------------
@lru_cache(maxsize=16)
def _bandpass_matrix(n: int, fs: float) -> np.ndarray:
    # detrend + sosfiltfilt are linear maps of the signal, so applying them to the
    # identity yields their exact matrix: y = M @ x reproduces :func:`bandpass`.
    return np.ascontiguousarray(bandpass(np.eye(n), fs, axis=0))


def pos_torch(rgb: "torch.Tensor", fs: float = 30.0, filtered: bool = True) -> "torch.Tensor":
    """Differentiable POS: ``(B, T, 3)`` RGB traces -> ``(B, T)`` pulses.

    Same algorithm, window and sign as :func:`pos`; with ``filtered`` the detrend and
    band-pass are applied as the exact linear operator of :func:`bandpass`, so the
    result matches :func:`pos` to float precision and gradients flow through all of it.
    """
    import torch
    import torch.nn.functional as F

    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise ValueError(f"expected (B, T, 3), got {tuple(rgb.shape)}")
    b, n, _ = rgb.shape
    win = min(_win_len(fs), n)
    w = rgb.unfold(1, win, 1)                                   # (B, m, 3, win)
    cn = w / (w.mean(dim=-1, keepdim=True) + _EPS)
    p = torch.as_tensor(_POS_P, dtype=rgb.dtype, device=rgb.device)
    s = torch.einsum("pc,bmcw->bmpw", p, cn)
    s1, s2 = s[:, :, 0], s[:, :, 1]
    alpha = s1.std(dim=-1, unbiased=False) / (s2.std(dim=-1, unbiased=False) + _EPS)
    h = s1 + alpha.unsqueeze(-1) * s2
    h = h - h.mean(dim=-1, keepdim=True)                        # (B, m, win)
    # Overlap-add with fold: columns are windows, kernel (1, win), stride 1.
    out = F.fold(h.transpose(1, 2), output_size=(1, n), kernel_size=(1, win)).reshape(b, n)
    out = -out
    if filtered:
        m = torch.as_tensor(_bandpass_matrix(n, float(fs)), dtype=rgb.dtype, device=rgb.device)
        out = out @ m.T
    return out


def masked_mean_rgb_torch(images: "torch.Tensor", mask: "torch.Tensor") -> "torch.Tensor":
    """Mean colour under a (soft) mask: images ``(B, T, 3, H, W)``, mask ``(B|1, 1, H, W)``
    -> ``(B, T, 3)``. Differentiable in both arguments."""
    if images.ndim != 5 or mask.ndim != 4:
        raise ValueError("expected images (B, T, 3, H, W) and mask (B|1, 1, H, W)")
    m = mask.to(images.dtype).unsqueeze(1)                     # (B|1, 1, 1, H, W)
    num = (images * m).sum(dim=(-2, -1))
    den = m.sum(dim=(-2, -1)).clamp_min(1e-6)
    return num / den


# --------------------------------------------------------------------------------------
# Offline convenience
# --------------------------------------------------------------------------------------
@dataclass
class Trace:
    t: np.ndarray          # (n,) frame timestamps, s
    rgb: np.ndarray        # (n, 3) mean skin RGB per frame, NaN where no face was tracked
    fs: float              # uniform rate the pulse was computed at
    pulse: np.ndarray      # (m,) pulse on the uniform grid ``t_uniform``
    t_uniform: np.ndarray  # (m,)

    @property
    def face_fraction(self) -> float:
        return float(np.isfinite(self.rgb[:, 0]).mean()) if len(self.rgb) else 0.0


def trace_to_hr(t: np.ndarray, rgb: np.ndarray, method: str = "pos",
                fs: float | None = None) -> tuple[HRResult, Trace]:
    """Heart rate from a per-frame RGB trace with timestamps (NaN rows = no face).

    The trace is resampled onto a uniform grid at ``fs`` (default: the median frame
    rate) over the frames that have a face; gaps are bridged linearly.
    """
    t = np.asarray(t, dtype=np.float64)
    rgb = np.asarray(rgb, dtype=np.float64)
    ok = np.all(np.isfinite(rgb), axis=1)
    if ok.sum() < 8:
        raise ValueError("too few frames with a face to estimate a heart rate")
    if fs is None:
        fs = float(1.0 / np.median(np.diff(t))) if len(t) > 1 else 30.0
    tv, cv = t[ok], rgb[ok]
    n = int(math.floor((tv[-1] - tv[0]) * fs)) + 1
    grid = tv[0] + np.arange(n) / fs
    uni = np.stack([np.interp(grid, tv, cv[:, c]) for c in range(3)], axis=1)
    pulse = extract_pulse(uni, fs, method)
    return estimate_hr(pulse, fs), Trace(t, rgb, fs, pulse, grid)


def hr_from_video(frames_iter: Iterable["Frame"], tracker, method: str = "pos",
                  fs: float | None = None) -> tuple[HRResult, Trace]:
    """Heart rate of the main face of a video.

    ``frames_iter`` yields :class:`~livedeid.core.records.Frame` objects (or ``(timestamp,
    image_bgr)`` pairs); ``tracker`` is a :class:`livedeid.tracking.mesh.FaceTracker` or anything
    with ``update(image_bgr, timestamp) -> list`` of objects with ``landmarks`` (and
    optionally ``lost_frames``). The largest currently seen face is used per frame.
    """
    ts, cols = [], []
    for item in frames_iter:
        if isinstance(item, tuple):
            timestamp, image = item
        else:
            timestamp, image = item.timestamp, item.image
        faces = [f for f in tracker.update(image, timestamp) if getattr(f, "lost_frames", 0) == 0]
        if faces:
            lm = max(faces, key=lambda f: np.ptp(f.landmarks[:, 0]) * np.ptp(f.landmarks[:, 1])).landmarks
            cols.append(mean_skin_rgb(image, lm))
        else:
            cols.append(np.full(3, np.nan))
        ts.append(float(timestamp))
    if not ts:
        raise ValueError("the video has no frames")
    return trace_to_hr(np.array(ts), np.array(cols), method, fs)
