"""Synthetic pulse videos on real faces: the heart-rate ground truth that no photo has.

A still photo (default: scikit-image's ``astronaut``, which ships with the package) is
given a blood-volume pulse on its skin, then moved about a textured background like a
head in front of a webcam, under flickering light, with sensor noise and optional
JPEG compression. Every nuisance is seeded, and the true heart rate is known exactly.

Pulse model
    A PPG-like blood-volume waveform per beat - a systolic Gaussian, a smaller and wider
    diastolic (dicrotic) wave after a notch - is driven by the integrated instantaneous
    heart rate. Skin reflectance drops with blood volume along the haemoglobin
    signature used by POS, RGB ~ (0.33, 0.77, 0.53): mostly green. ``pulse_amplitude`` is
    the peak-to-peak relative change of green (default 0.5 %; real skin: ~0.2-1 %).
    The pulse is written into the still image *before* it is warped into the frame, so
    it moves with the face, on a feathered skin mask (MediaPipe face oval minus eyes,
    brows, nostrils and mouth, gated by skin colour so hair over the forehead stays
    pulse-free).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from livedeid.core.errors import UserError
from livedeid.core.face_regions import (
    FACE_OVAL,
    LEFT_CHEEK,
    RIGHT_CHEEK,
    exclusion_polygons,
    fill_polygons,
    polygon_points,
)
from livedeid.core.records import Frame
from livedeid.rppg.spectrum import BAND_HZ
from livedeid.tracking.still import still_landmarks

# Relative reflectance change per unit blood volume, RGB (de Haan & van Leest 2014,
# the "pulse signature" POS assumes), normalised so green is 1.
PULSE_SIGNATURE_RGB = np.array([0.33, 0.77, 0.53]) / 0.77


@dataclass(frozen=True)
class Motion:
    """Head motion. Amplitudes are standard deviations of smooth random walks except
    ``turn_deg``, the peak yaw of the occasional head turns."""

    translate_px: float | None = None  # output-frame pixels; None: ``translate_frac`` of the height
    roll_deg: float = 3.0        # in-plane rotation
    scale: float = 0.03          # relative size change (leaning in/out)
    turn_deg: float = 15.0       # yaw of a head turn (perspective foreshortening)
    turn_every_s: float = 7.0    # mean spacing of turns (Poisson); 0 = none
    turn_s: float = 1.5          # duration of one turn, there and back
    smooth_s: float = 0.8        # time scale of the random walks
    translate_frac: float = 0.015  # used when translate_px is None

    @classmethod
    def none(cls) -> "Motion":
        return cls(translate_px=0.0, roll_deg=0.0, scale=0.0, turn_deg=0.0, turn_every_s=0.0)

    def scaled(self, k: float) -> "Motion":
        tr = None if self.translate_px is None else self.translate_px * k
        return replace(self, translate_px=tr, translate_frac=self.translate_frac * k, roll_deg=self.roll_deg * k,
                       scale=self.scale * k, turn_deg=self.turn_deg * k)


def ppg_waveform(phase: np.ndarray) -> np.ndarray:
    """Blood-volume pulse for a cardiac phase in cycles (any real; periodic with 1).

    Systolic peak at 0.2 cycles, dicrotic notch near 0.4, diastolic wave at 0.52; the
    result is scaled to [0, 1]. Its fundamental dominates the spectrum (as in real PPG),
    with the second and third harmonics ~5 and ~8 dB down.
    """
    w = _ppg_raw(np.asarray(phase, dtype=np.float64))
    return (w - _PPG_LO) / (_PPG_HI - _PPG_LO)


def _ppg_raw(phase: np.ndarray) -> np.ndarray:
    def bump(centre: float, width: float) -> np.ndarray:
        d = (phase - centre + 0.5) % 1.0 - 0.5  # wrapped distance keeps the beat periodic
        return np.exp(-0.5 * (d / width) ** 2)

    return bump(0.2, 0.09) + 0.4 * bump(0.52, 0.11)


_PPG_GRID = _ppg_raw(np.linspace(0.0, 1.0, 2048, endpoint=False))
_PPG_LO, _PPG_HI = float(_PPG_GRID.min()), float(_PPG_GRID.max())


def _smooth_walk(rng: np.random.Generator, n: int, fps: float, smooth_s: float) -> np.ndarray:
    """Zero-mean, unit-std smooth random process (Gaussian-filtered white noise)."""
    if n < 2:
        return np.zeros(n)
    x = gaussian_filter1d(rng.normal(size=n + 200), sigma=max(smooth_s * fps, 1e-3), mode="wrap")[100:-100]
    x -= x.mean()
    sd = x.std()
    return x / sd if sd > 0 else x


def _mains_alias_hz(mains_hz: float, fps: float) -> float:
    """Apparent frequency of lamp flicker (twice the mains frequency) sampled at ``fps``."""
    f = (2.0 * mains_hz) % fps
    return min(f, fps - f)


def _astronaut_bgr() -> np.ndarray:
    from skimage import data
    return cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)


def _read_face(face: np.ndarray | str | Path | None) -> np.ndarray:
    """The source photo: the astronaut when None, else a BGR array or an image file."""
    if face is None:
        return _astronaut_bgr()
    if isinstance(face, (str, Path)):
        img = cv2.imread(str(face), cv2.IMREAD_COLOR)
        if img is None:
            raise UserError(f"cannot read face image: {face}")
        return img
    return np.ascontiguousarray(face)


def skin_pulse_mask(image_bgr: np.ndarray, landmarks: np.ndarray, feather_px: float | None = None) -> np.ndarray:
    """Soft ``(H, W)`` float32 mask in [0, 1] of the skin that receives the pulse.

    Face oval minus (grown) eyes, brows, nostrils and lips; multiplied by a skin-colour
    likelihood learned from the cheeks (YCrCb chroma within ~3 sigma) so that hair,
    glasses and beards inside the oval stay static; feathered by a Gaussian blur.
    """
    h, w = image_bgr.shape[:2]
    oval = polygon_points(landmarks, FACE_OVAL)
    size = float(np.ptp(oval[:, 1]))
    mask = fill_polygons(np.zeros((h, w), np.uint8), [oval], 255)
    fill_polygons(mask, exclusion_polygons(landmarks), 0)
    ycc = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2YCrCb).astype(np.float32)
    cheeks = fill_polygons(np.zeros((h, w), np.uint8),
                           [polygon_points(landmarks, RIGHT_CHEEK), polygon_points(landmarks, LEFT_CHEEK)], 255)
    sample = ycc[cheeks > 0][:, 1:]
    if len(sample) >= 20:
        mu = sample.mean(axis=0)
        cov = np.cov(sample.T) + np.eye(2) * 4.0  # floor: JPEG-flat cheeks have tiny spread
        d = ycc[..., 1:] - mu
        m2 = np.einsum("...i,ij,...j->...", d, np.linalg.inv(cov), d)
        likelihood = np.clip(1.5 - 0.5 * np.sqrt(m2) / 2.0, 0.0, 1.0)  # 1 up to 1 sigma, 0 beyond 3
        # Very dark or blown-out pixels (hair shadow, specular glare) carry no pulse.
        luma = ycc[..., 0]
        likelihood *= np.clip((luma - 25.0) / 25.0, 0, 1) * np.clip((250.0 - luma) / 15.0, 0, 1)
    else:
        likelihood = np.ones((h, w), np.float32)
    soft = (mask.astype(np.float32) / 255.0) * likelihood.astype(np.float32)
    sigma = feather_px if feather_px is not None else max(size * 0.01, 0.7)
    return cv2.GaussianBlur(soft, (0, 0), sigma)


def background_image(rng: np.random.Generator, size: tuple[int, int], kind: str) -> np.ndarray:
    """Float32 BGR ``(H, W, 3)`` backdrop: ``plain`` grey or a ``textured`` wall."""
    w, h = size
    if kind == "plain":
        return np.full((h, w, 3), (150, 160, 165), np.float32)
    if kind != "textured":
        raise ValueError(f"background must be 'plain', 'textured' or an image, got {kind!r}")
    # A wall: soft blotches of mostly-grey variation (large to small), fine grain and a
    # shading gradient; colour channels share most of it, like paint under one light.
    base = np.zeros((h, w, 3), np.float32)
    for cells, amp in ((4, 14.0), (24, 6.0), (w // 3, 2.5)):
        sw, sh = max(int(cells), 2), max(int(cells * h / w), 2)
        grey = rng.normal(size=(sh, sw, 1)).astype(np.float32)
        col = 0.25 * rng.normal(size=(sh, sw, 3)).astype(np.float32)
        base += amp * cv2.resize(grey + col, (w, h), interpolation=cv2.INTER_CUBIC)
    tint = np.array([140, 150, 160], np.float32) + rng.uniform(-25, 25, 3).astype(np.float32)
    shade = np.linspace(1.1, 0.85, w, dtype=np.float32)[None, :, None]
    return np.clip((tint + base) * shade, 0, 255)


def pose_homography(layer_hw: tuple[int, int], x: float, y: float, roll_deg: float, scale: float,
                    yaw_deg: float) -> np.ndarray:
    """3x3 map from a face layer's pixels (``layer_hw`` = its height, width) to frame
    pixels for a head centred at (``x``, ``y``) with in-plane ``roll_deg``, relative
    ``scale`` and ``yaw_deg``."""
    lh, lw = layer_hw
    c = np.array([[1, 0, -lw / 2], [0, 1, -lh * 0.5], [0, 0, 1]], dtype=np.float64)
    # Yaw of a planar face about its vertical axis seen from ~3 face widths away:
    # x' = x cos / (1 - x sin / Z), the foreshortening of a real head turn.
    yaw = math.radians(yaw_deg)
    z = 3.0 * lw
    turn = np.array([[math.cos(yaw), 0, 0], [0, 1, 0], [-math.sin(yaw) / z, 0, 1]])
    r = math.radians(roll_deg)
    rot = np.array([[scale * math.cos(r), -scale * math.sin(r), 0], [scale * math.sin(r), scale * math.cos(r), 0],
                    [0, 0, 1]])
    tr = np.array([[1, 0, x], [0, 1, y], [0, 0, 1]])
    return tr @ rot @ turn @ c


def blend_layer(layer: np.ndarray, h_mat: np.ndarray, canvas: np.ndarray):
    """Warp a float32 BGR + alpha ``layer`` by ``h_mat`` and alpha-blend it over the float32
    BGR ``canvas``, only inside the box the layer lands in (cheap for small faces).
    Returns ``((x0, y0, x1, y1), blended region)`` without touching ``canvas``, or None
    when the layer falls outside the frame."""
    lh, lw = layer.shape[:2]
    h_out, w_out = canvas.shape[:2]
    corners = cv2.perspectiveTransform(np.array([[[0, 0], [lw, 0], [lw, lh], [0, lh]]], np.float64), h_mat)[0]
    x0, y0 = np.maximum(np.floor(corners.min(axis=0)).astype(int), 0)
    x1, y1 = np.minimum(np.ceil(corners.max(axis=0)).astype(int) + 1, [w_out, h_out])
    if x1 <= x0 or y1 <= y0:
        return None
    shift = np.array([[1, 0, -x0], [0, 1, -y0], [0, 0, 1]], dtype=np.float64)
    warped = cv2.warpPerspective(layer, shift @ h_mat, (int(x1 - x0), int(y1 - y0)),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    a = np.ascontiguousarray(warped[..., 3])
    blend = cv2.blendLinear(np.ascontiguousarray(warped[..., :3]), canvas[y0:y1, x0:x1], a, 1.0 - a)
    return (int(x0), int(y0), int(x1), int(y1)), blend


class SyntheticPulseSource:
    """Frames of a face with a known pulse.

    Iterating yields :class:`~livedeid.core.records.Frame` objects (``timestamp = index / fps``);
    it is deterministic for a given ``seed`` and can be iterated repeatedly.
    ``true_hr`` is the heart rate in bpm (a float, or a per-frame array when
    ``hr_variability`` > 0); ``true_pulse`` the per-frame blood volume in [0, 1].

    ``motion``: a :class:`Motion` or a multiplier of the defaults (0 = still head).
    ``flicker``: relative amplitude of lamp flicker (``mains_hz`` lamp seen at ``fps``:
    50 Hz mains at 30 fps aliases to 10 Hz) plus an equal slow drift below 0.2 Hz;
    the constructor refuses settings whose alias falls in the heart-rate band.
    ``noise_std``: Gaussian sensor noise, in 8-bit levels. ``jpeg_quality``: 1-100 or None.
    ``face_fraction``: face-oval height / frame height.
    """

    def __init__(
        self,
        face: np.ndarray | str | Path | None = None,
        hr_bpm: float = 72.0,
        duration_s: float = 20.0,
        fps: float = 30.0,
        size: tuple[int, int] = (1280, 720),
        motion: Motion | float = 1.0,
        flicker: float = 0.01,
        noise_std: float = 2.0,
        jpeg_quality: int | None = None,
        hr_variability: float = 0.0,
        seed: int = 0,
        pulse_amplitude: float = 0.005,
        face_fraction: float = 0.45,
        background: str | np.ndarray = "textured",
        mains_hz: float = 50.0,
    ):
        if not (30.0 <= hr_bpm <= 220.0):
            raise ValueError("hr_bpm must be within 30-220")
        if jpeg_quality is not None and not (1 <= jpeg_quality <= 100):
            raise ValueError("jpeg_quality must be 1-100 or None")
        self.hr_bpm = float(hr_bpm)
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))
        self.frame_count = int(round(duration_s * fps))
        self.duration_s = self.frame_count / self.fps
        if not isinstance(motion, Motion):
            motion = Motion().scaled(float(motion))
        if motion.translate_px is None:
            motion = replace(motion, translate_px=motion.translate_frac * self.size[1])
        self.motion = motion
        self.flicker = float(flicker)
        self.noise_std = float(noise_std)
        self.jpeg_quality = jpeg_quality
        self.hr_variability = float(hr_variability)
        self.seed = int(seed)
        self.pulse_amplitude = float(pulse_amplitude)
        self.flicker_hz = _mains_alias_hz(mains_hz, self.fps)
        if self.flicker > 0 and BAND_HZ[0] - 0.2 <= self.flicker_hz <= BAND_HZ[1] + 0.2:
            raise ValueError(
                f"{mains_hz} Hz mains flicker aliases to {self.flicker_hz:.2f} Hz at {fps} fps, "
                "inside the heart-rate band: pick another fps"
            )
        rng = np.random.default_rng(self.seed)
        # The draws below share one generator: their order is part of the seed's meaning.
        self._make_face_layer(_read_face(face), face_fraction)
        if isinstance(background, np.ndarray):
            bg = cv2.resize(background, self.size, interpolation=cv2.INTER_AREA).astype(np.float32)
        else:
            bg = background_image(rng, self.size, background)
        self._bg = np.ascontiguousarray(bg, dtype=np.float32)
        t = np.arange(self.frame_count) / self.fps
        self._draw_pulse(rng)
        self._draw_head_pose(rng, t)
        self._draw_light(rng, t)

    def _make_face_layer(self, img: np.ndarray, face_fraction: float) -> None:
        """Source face -> scaled face layer (colour, alpha, skin mask) in output pixels."""
        lm = still_landmarks(img)
        if lm is None:
            raise UserError("no face found in the synthetic-pulse source image")
        oval = polygon_points(lm, FACE_OVAL)
        k = face_fraction * self.size[1] / float(np.ptp(oval[:, 1]))
        centre = oval.mean(axis=0)
        # Layer: a region around the head (hair, neck) big enough for motion and turns.
        half = np.array([np.ptp(oval[:, 0]) * 1.2, np.ptp(oval[:, 1]) * 1.25]) * k
        lw, lh = int(2 * half[0]) | 1, int(2 * half[1]) | 1
        # Source->layer similarity: scale k, face-oval centre to layer centre.
        a = np.array([[k, 0, lw / 2 - k * centre[0]], [0, k, lh / 2 - k * centre[1]]])
        interp = cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC
        layer = cv2.warpAffine(img, a, (lw, lh), flags=interp, borderMode=cv2.BORDER_REFLECT)
        lm_layer = lm * k + a[:, 2]
        self._skin = skin_pulse_mask(layer, lm_layer)
        # Alpha: a feathered ellipse around the head (face, hair, upper neck).
        alpha = np.zeros((lh, lw), np.float32)
        cv2.ellipse(alpha, (lw // 2, lh // 2), (int(lw * 0.42), int(lh * 0.45)), 0, 0, 360, 1.0, -1)
        self._alpha = cv2.GaussianBlur(alpha, (0, 0), max(lw * 0.03, 1.0))
        # Frame i's face is face4 - c_i * pulse4 (BGR + alpha): one fused OpenCV op per
        # frame. pulse4 is the colour change per unit blood volume (zero on non-skin and
        # in the alpha channel).
        bgr_sig = PULSE_SIGNATURE_RGB[::-1].astype(np.float32)
        layer_f = layer.astype(np.float32)
        self._face4 = np.dstack([layer_f, self._alpha])
        self._pulse4 = np.dstack([layer_f * self._skin[..., None] * bgr_sig, np.zeros_like(self._alpha)])
        self.landmarks_layer = lm_layer
        self.source_landmarks = lm

    def _draw_pulse(self, rng: np.random.Generator) -> None:
        """Heart rate and the pulse phase (integral of the rate, so variability is smooth)."""
        n = self.frame_count
        if self.hr_variability > 0:
            hr = self.hr_bpm + self.hr_variability * _smooth_walk(rng, n, self.fps, 8.0)
            self.true_hr: float | np.ndarray = hr
        else:
            hr = np.full(n, self.hr_bpm)
            self.true_hr = self.hr_bpm
        phase = np.concatenate([[0.0], np.cumsum(hr[:-1] / 60.0 / self.fps)]) + rng.uniform()
        self.true_pulse = ppg_waveform(phase)

    def _draw_head_pose(self, rng: np.random.Generator, t: np.ndarray) -> None:
        """Head pose per frame: centre position, roll, scale, yaw."""
        m, n = self.motion, self.frame_count
        w_out, h_out = self.size
        self._pos = np.stack([w_out / 2 + m.translate_px * _smooth_walk(rng, n, self.fps, m.smooth_s),
                              h_out / 2 + m.translate_px * _smooth_walk(rng, n, self.fps, m.smooth_s)], axis=1)
        self._roll = m.roll_deg * _smooth_walk(rng, n, self.fps, m.smooth_s * 1.5)
        self._scale = 1.0 + m.scale * _smooth_walk(rng, n, self.fps, m.smooth_s * 2.0)
        self._yaw = np.zeros(n)
        if m.turn_deg > 0 and m.turn_every_s > 0:
            start = rng.exponential(m.turn_every_s / 2)
            while start < self.duration_s:
                ii = (t >= start) & (t < start + m.turn_s)
                u = (t[ii] - start) / m.turn_s
                self._yaw[ii] += rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.0) * m.turn_deg * np.sin(np.pi * u) ** 2
                start += m.turn_s + rng.exponential(m.turn_every_s)

    def _draw_light(self, rng: np.random.Generator, t: np.ndarray) -> None:
        """Light: aliased lamp flicker + slow drift (both well outside 0.7-3.5 Hz)."""
        n = self.frame_count
        # Drawn over at least a minute and cut to the clip: normalising a short clip's own
        # (nearly constant) drift by its tiny std would blow the light up.
        long_n = max(n, int(60 * self.fps))
        drift = gaussian_filter1d(rng.normal(size=long_n), sigma=self.fps * 2.5, mode="wrap")
        drift = ((drift - drift.mean()) / (drift.std() + 1e-12))[:n]
        self._light = 1.0 + self.flicker * (np.sin(2 * np.pi * self.flicker_hz * t + rng.uniform(0, 2 * np.pi)) + drift)

    # -- ground truth -------------------------------------------------------------------
    @property
    def mean_true_hr(self) -> float:
        return float(np.mean(self.true_hr))

    def truth(self) -> dict:
        return {
            "hr_bpm": self.mean_true_hr,
            "true_hr": np.asarray(self.true_hr).tolist() if self.hr_variability > 0 else self.hr_bpm,
            "fps": self.fps, "frame_count": self.frame_count, "size": list(self.size),
            "seed": self.seed, "pulse_amplitude": self.pulse_amplitude, "flicker": self.flicker,
            "flicker_hz": self.flicker_hz, "noise_std": self.noise_std, "jpeg_quality": self.jpeg_quality,
        }

    # -- rendering ----------------------------------------------------------------------
    def __len__(self) -> int:
        return self.frame_count

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.frame_count):
            yield self.frame(i)

    def homography(self, i: int) -> np.ndarray:
        """3x3 map from face-layer pixels to frame pixels at frame ``i``."""
        return pose_homography(self._alpha.shape, self._pos[i, 0], self._pos[i, 1], self._roll[i],
                               self._scale[i], self._yaw[i])

    def face_layer(self, i: int) -> np.ndarray:
        """The face layer at frame ``i``: float32 BGR + alpha ``(lh, lw, 4)``, pulse applied
        (reflectance drops with blood volume), not yet warped into the frame."""
        c = self.pulse_amplitude * float(self.true_pulse[i] - 0.5)
        return cv2.scaleAdd(self._pulse4, -c, self._face4)

    def frame(self, i: int) -> Frame:
        if not 0 <= i < self.frame_count:
            raise IndexError(i)
        # Pulse on the still face, then the warp.
        face = self.face_layer(i)
        h_mat = self.homography(i)
        light = float(self._light[i])
        if self.noise_std > 0:
            # OpenCV's per-thread RNG reseeded per frame: reproducible in any order.
            cv2.setRNGSeed(hash((self.seed, i)) & 0x7FFFFFFF)
            noise = np.empty_like(self._bg)
            cv2.randn(noise, 0.0, self.noise_std)
        else:
            noise = np.zeros_like(self._bg)
        # addWeighted to CV_8U rounds and saturates: light * scene + noise -> uint8.
        img = cv2.addWeighted(self._bg, light, noise, 1.0, 0.0, dtype=cv2.CV_8U)
        pasted = blend_layer(face, h_mat, self._bg)
        if pasted is not None:
            (x0, y0, x1, y1), blend = pasted
            img[y0:y1, x0:x1] = cv2.addWeighted(blend, light, noise[y0:y1, x0:x1], 1.0, 0.0, dtype=cv2.CV_8U)
        if self.jpeg_quality is not None:
            ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(self.jpeg_quality)])
            img = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        return Frame(image=img, index=i, timestamp=i / self.fps)

    def write(self, path: str | Path, crf: int = 12) -> dict:
        """Write the clip as H.264 mp4 (PyAV) and return :meth:`truth`.

        A low CRF is the default because the pulse is under one grey level: heavy
        compression would erase it (which is what ``jpeg_quality`` is for, on purpose).
        """
        import av

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        w, h = self.size
        with av.open(str(path), mode="w") as container:
            stream = container.add_stream("libx264", rate=Fraction(self.fps).limit_denominator(1001))
            stream.width, stream.height = w - w % 2, h - h % 2
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(int(crf)), "preset": "veryfast"}
            for fr in self:
                vf = av.VideoFrame.from_ndarray(fr.image[: stream.height, : stream.width], format="bgr24")
                for pkt in stream.encode(vf):
                    container.mux(pkt)
            for pkt in stream.encode():
                container.mux(pkt)
        return self.truth()


def write_clip(path: str | Path, crf: int = 12, **kwargs) -> dict:
    """Render a :class:`SyntheticPulseSource` built from ``kwargs`` to ``path`` (mp4);
    returns its ground truth (:meth:`SyntheticPulseSource.truth`)."""
    return SyntheticPulseSource(**kwargs).write(path, crf=crf)
