"""Unit tests of livedeid.rppg on traces whose heart rate is known by construction."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from livedeid.core.face_regions import FACE_OVAL, LEFT_EYE, LIPS, RIGHT_EYE, polygon_points
from livedeid.rppg.differentiable import masked_mean_rgb_torch, pos_torch
from livedeid.rppg.methods import chrom, extract_pulse, green, pos
from livedeid.rppg.monitor import trace_to_hr
from livedeid.rppg.regions import SKIN_POLYGONS, mean_skin_rgb, skin_mask
from livedeid.rppg.spectrum import bandpass, estimate_hr, quality_from_snr
from livedeid.rppg.streaming import StreamingHR

FS = 30.0
SIGNATURE = np.array([0.33, 0.77, 0.53])  # RGB pulse direction assumed by POS


def skin_trace(hr_bpm: float, seconds: float, fs: float = FS, seed: int = 0, noise: float = 0.05,
               amplitude: float = 0.005) -> tuple[np.ndarray, np.ndarray]:
    """An RGB skin trace: pulse along the haemoglobin signature, white-light intensity
    drift (which POS/CHROM must cancel) and sensor noise. Returns (rgb, blood volume)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * fs))) / fs
    volume = 0.5 - 0.5 * np.cos(2 * np.pi * hr_bpm / 60.0 * t)
    base = np.array([170.0, 120.0, 95.0])
    light = 1.0 + 0.03 * np.sin(2 * np.pi * 0.15 * t) + 0.01 * np.sin(2 * np.pi * 10.0 * t)
    rgb = base * (1.0 - amplitude * np.outer(volume - 0.5, SIGNATURE / SIGNATURE[1])) * light[:, None]
    return rgb + rng.normal(0.0, noise, rgb.shape), volume


@pytest.mark.parametrize("method", ["pos", "chrom", "green"])
def test_methods_recover_heart_rate(method):
    for i, hr in enumerate([45.0, 63.7, 88.2, 121.5, 158.0, 190.0]):
        rgb, volume = skin_trace(hr, 20.0, seed=i)
        pulse = extract_pulse(rgb, FS, method)
        assert pulse.shape == (len(rgb),)
        res = estimate_hr(pulse, FS)
        assert abs(res.bpm - hr) < 1.0, (method, hr, res.bpm)
        assert res.quality == "good"
        # Shared sign convention: the pulse rises with blood volume.
        core = slice(int(2 * FS), -int(2 * FS))
        assert np.corrcoef(pulse[core], volume[core])[0, 1] > 0.9


def test_pos_and_chrom_cancel_intensity_changes_green_does_not():
    # A strong white-light wobble at 100 bpm plus a weak pulse at 70 bpm: POS and CHROM
    # project intensity out and find 70; the green channel alone is fooled.
    t = np.arange(int(20 * FS)) / FS
    rgb, _ = skin_trace(70.0, 20.0, noise=0.0)
    rgb = rgb * (1.0 + 0.01 * np.sin(2 * np.pi * 100 / 60 * t))[:, None]
    assert abs(estimate_hr(pos(rgb, FS), FS).bpm - 70.0) < 1.0
    assert abs(estimate_hr(chrom(rgb, FS), FS).bpm - 70.0) < 1.0
    assert abs(estimate_hr(green(rgb, FS), FS).bpm - 100.0) < 1.0


def test_bandpass_rejects_out_of_band():
    t = np.arange(int(30 * FS)) / FS
    gain = {}
    for f in (0.1, 0.3, 1.5, 2.5, 6.0, 10.0):
        y = bandpass(np.sin(2 * np.pi * f * t), FS)
        core = y[int(5 * FS):-int(5 * FS)]
        gain[f] = core.std() * np.sqrt(2)
    assert gain[1.5] == pytest.approx(1.0, abs=0.05)
    assert gain[2.5] == pytest.approx(1.0, abs=0.05)
    for f in (0.1, 0.3, 6.0, 10.0):
        assert gain[f] < 0.05, (f, gain[f])  # > 26 dB down
    # A linear ramp (slow drift) is removed entirely by the detrend.
    assert np.abs(bandpass(np.linspace(0, 50, 300), FS)).max() < 1e-6


def test_sub_bin_interpolation_beats_the_bin_width():
    seconds = 12.0
    bin_bpm = 60.0 / seconds  # 5 bpm Rayleigh resolution
    rng = np.random.default_rng(3)
    errs = []
    for hr in rng.uniform(50, 180, 25):
        t = np.arange(int(seconds * FS)) / FS
        x = np.sin(2 * np.pi * hr / 60 * t + rng.uniform(0, 6.28)) + rng.normal(0, 0.1, len(t))
        errs.append(estimate_hr(x, FS).bpm - hr)
    errs = np.abs(errs)
    assert errs.max() < 0.1 * bin_bpm, errs.max()
    # Without zero padding / interpolation the plain periodogram is bin-limited.
    hr = 60.0 * (8.5 / seconds)  # exactly between two bins
    t = np.arange(int(seconds * FS)) / FS
    freqs = np.fft.rfftfreq(len(t), 1 / FS)
    plain = freqs[np.argmax(np.abs(np.fft.rfft(np.sin(2 * np.pi * hr / 60 * t))))] * 60
    assert abs(plain - hr) >= 0.4 * bin_bpm
    assert abs(estimate_hr(np.sin(2 * np.pi * hr / 60 * t), FS).bpm - hr) < 0.05 * bin_bpm


def test_snr_and_quality_poor_on_noise_good_on_pulse():
    rng = np.random.default_rng(7)
    grades = []
    for _ in range(100):
        rgb = np.array([170.0, 120.0, 95.0]) + rng.normal(0, 0.3, (int(10 * FS), 3))
        res = estimate_hr(pos(rgb, FS), FS)
        grades.append(res.quality)
    grades = np.array(grades)
    assert (grades == "good").sum() == 0
    assert (grades == "poor").mean() >= 0.95
    rgb, _ = skin_trace(80.0, 10.0)
    res = estimate_hr(pos(rgb, FS), FS)
    assert res.quality == "good" and res.snr_db > 5.0
    assert res.freqs.shape == res.power.shape and res.power.max() == pytest.approx(1.0)
    assert quality_from_snr(res.floor_db + 9.9, res.floor_db) == "poor"
    assert quality_from_snr(res.floor_db + 10.0, res.floor_db) == "fair"
    assert quality_from_snr(res.floor_db + 12.0, res.floor_db) == "good"


def test_streaming_hr_with_jittered_timestamps_and_dropouts():
    hr = 96.0
    rng = np.random.default_rng(11)
    # ~30 fps with 8 ms jitter and 10 % dropped frames; the face is lost from 14 to 16 s.
    t = np.cumsum(rng.uniform(0.025, 0.042, 1200))
    t = t[rng.uniform(size=len(t)) > 0.1]
    t = t[t < 32.0]
    volume = 0.5 - 0.5 * np.cos(2 * np.pi * hr / 60 * t)
    rgb = np.array([170.0, 120.0, 95.0]) * (1 - 0.005 * np.outer(volume - 0.5, SIGNATURE / 0.77))
    rgb = rgb * (1 + 0.02 * np.sin(2 * np.pi * 0.1 * t))[:, None] + rng.normal(0, 0.05, rgb.shape)
    s = StreamingHR("pos", window_s=10.0, update_hz=1.0, min_s=5.0)
    assert s.reading is None
    readings = []
    for ti, c in zip(t, rgb):
        r = s.push(ti, None if 14.0 <= ti < 16.0 else c)
        if not readings or r is not readings[-1]:
            readings.append(r)
    # At least one update per second of stream.
    assert len(readings) >= 0.95 * (t[-1] - t[0])
    by_time = {round(r.timestamp): r for r in readings}
    early = [r for r in readings if r.timestamp < 4.5]
    assert early and all(r.bpm is None for r in early)          # not enough signal yet
    assert by_time[12].bpm == pytest.approx(hr, abs=1.5)
    assert by_time[12].quality == "good"
    gap = [r for r in readings if 14.6 <= r.timestamp < 16.0]
    assert gap and all(r.bpm is None and r.quality == "poor" for r in gap)
    after = [r for r in readings if 16.0 <= r.timestamp < 20.5]
    assert all(r.bpm is None for r in after)                     # restarted after the gap
    final = s.reading
    assert final.bpm == pytest.approx(hr, abs=1.0) and final.quality == "good"
    assert final.signal_s == pytest.approx(10.0, abs=0.1)
    dt = np.diff(final.waveform_t)
    assert np.allclose(dt, 1 / 30.0) and final.waveform.shape == final.waveform_t.shape
    assert final.waveform_t[-1] == pytest.approx(final.timestamp)


def test_streaming_hr_hides_numbers_without_a_pulse():
    rng = np.random.default_rng(5)
    s = StreamingHR("pos")
    shown = 0
    for i in range(int(60 * 30)):
        r = s.push(i / 30.0, np.array([170.0, 120.0, 95.0]) + rng.normal(0, 0.3, 3))
        shown += r is not None and r.bpm is not None and r.quality == "good"
    assert shown == 0


@pytest.fixture(scope="module")
def astronaut_landmarks():
    pytest.importorskip("mediapipe")
    from skimage import data

    from livedeid.tracking.still import still_landmarks

    img = cv2.cvtColor(data.astronaut(), cv2.COLOR_RGB2BGR)
    img = cv2.resize(img, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    return img, still_landmarks(img).astype(np.float32)


def test_skin_mask_covers_forehead_and_cheeks_not_eyes_or_mouth(astronaut_landmarks):
    img, lm = astronaut_landmarks
    mask = skin_mask(lm, img.shape[:2])
    assert mask.dtype == bool and mask.shape == img.shape[:2]

    def inside(i: int) -> bool:
        x, y = np.round(lm[i]).astype(int)
        return bool(mask[y, x])

    # Eyes (contours and iris centres), brows, lips, nostrils: all outside.
    excluded = RIGHT_EYE + LEFT_EYE + (468, 473) + LIPS + (1, 2, 98, 327) + (52, 282)
    assert not any(inside(i) for i in excluded)
    # Mid-forehead and the middle of each cheek: inside.
    for poly in SKIN_POLYGONS:
        cx, cy = np.round(polygon_points(lm, poly).mean(axis=0)).astype(int)
        assert mask[cy, cx]
    assert inside(151) and inside(50) and inside(280)
    face_area = cv2.contourArea(polygon_points(lm, FACE_OVAL).astype(np.float32))
    assert 0.15 < mask.sum() / face_area < 0.5
    # The fast box-limited mean equals the plain mean over the full-frame mask.
    expected = img[mask].astype(np.float64).mean(axis=0)[::-1]
    assert np.allclose(mean_skin_rgb(img, lm), expected, atol=1e-6)
    # Off-frame face: NaN rather than a fake colour.
    assert np.isnan(mean_skin_rgb(img, lm + 5000)).all()


def test_trace_to_hr_bridges_missing_frames():
    rgb, _ = skin_trace(75.0, 20.0)
    t = np.arange(len(rgb)) / FS
    rgb[100:110] = np.nan
    res, trace = trace_to_hr(t, rgb, "pos")
    assert abs(res.bpm - 75.0) < 1.0
    assert trace.face_fraction == pytest.approx(1 - 10 / len(rgb))
    with pytest.raises(ValueError):
        pos(rgb, FS)  # raw methods refuse NaN instead of propagating it silently


def test_pos_torch_matches_numpy_and_has_gradients():
    torch = pytest.importorskip("torch")
    traces = np.stack([skin_trace(hr, 8.0, seed=i)[0] for i, hr in enumerate([60.0, 110.0])])
    x = torch.tensor(traces, dtype=torch.float64, requires_grad=True)
    y = pos_torch(x, fs=FS)
    assert y.shape == (2, traces.shape[1])
    for b in range(2):
        ref = pos(traces[b], FS)
        assert np.allclose(y[b].detach().numpy(), ref, atol=1e-9 * np.abs(ref).max() + 1e-12)
    # Unfiltered variant equals the raw overlap-add.
    y_raw = pos_torch(x, fs=FS, filtered=False)
    assert np.allclose(y_raw[0].detach().numpy(), pos(traces[0], FS, filtered=False), atol=1e-9)
    # A loss on the pulse reaches the colours.
    y.pow(2).mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    # float32 (what training uses) agrees to float32 precision.
    y32 = pos_torch(x.detach().float(), fs=FS)
    ref0 = pos(traces[0], FS)
    assert np.allclose(y32[0].numpy(), ref0, atol=2e-3 * np.abs(ref0).max())


def test_masked_mean_rgb_torch():
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 4, 3, 16, 16, generator=g, requires_grad=True)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., 4:10, 3:12] = 1.0
    out = masked_mean_rgb_torch(images, mask)
    assert out.shape == (2, 4, 3)
    ref = images.detach()[..., 4:10, 3:12].mean(dim=(-2, -1))
    assert torch.allclose(out.detach(), ref, atol=1e-6)
    out.sum().backward()
    assert images.grad[..., 0, 0].abs().sum() == 0 and images.grad[..., 5, 5].abs().sum() > 0
