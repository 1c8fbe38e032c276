"""The personal cloak's optimisation and verification (livedeid.cloak.optimise / eot /
verify): real MediaPipe, the real differentiable recogniser ports and the real dlib and
SFace evaluators, on the astronaut photo that ships with scikit-image."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from livedeid.cloak.eot import EotSettings, cloaked_view  # noqa: E402
from livedeid.cloak.optimise import CloakSettings, Pattern, SignPattern, optimise_cloak, weight_map  # noqa: E402
from livedeid.cloak.verify import CloakVerifier, cloak_image, verify_cloak  # noqa: E402
from livedeid.core.errors import UserError  # noqa: E402
from livedeid.core.face_regions import FOREHEAD, LEFT_EYE, RIGHT_EYE, fill_polygons, polygon_points  # noqa: E402
from livedeid.core.geometry import apply_affine  # noqa: E402
from livedeid.protect.composite import oval_mask  # noqa: E402
from livedeid.protect.windows import extract_crop  # noqa: E402
from livedeid.tracking.mesh import alignment  # noqa: E402
from livedeid.tracking.still import still_landmarks  # noqa: E402

BUDGET = 8 / 255


@pytest.fixture(scope="module")
def astronaut_crop(astronaut_bgr):
    """(crop (3, 128, 128), landmarks in crop pixels) of the astronaut's face."""
    lm = still_landmarks(astronaut_bgr)
    assert lm is not None
    to_crop, _, _ = alignment(lm, 128)
    return extract_crop(astronaut_bgr, to_crop, 128), apply_affine(to_crop, lm)


def _region(lm, poly) -> np.ndarray:
    return fill_polygons(np.zeros((128, 128), np.uint8), [polygon_points(lm, poly)]) > 0


def test_weight_map_follows_the_cloaks_region_and_spares_the_pulse_regions(astronaut_crop):
    _, lm = astronaut_crop
    settings = CloakSettings()
    w = weight_map([lm], 128, settings)
    box, feather = oval_mask(lm, (128, 128), grow=settings.grow)  # the oval grown over hairline, ears, jaw
    inside = np.zeros((128, 128), bool)
    inside[box[1]:box[3], box[0]:box[2]] = feather > 0
    assert w.dtype == np.float32 and w.shape == (128, 128)
    assert float(w[~inside].max()) == 0.0          # nothing where the composite adds nothing
    eyes = w[_region(lm, RIGHT_EYE) | _region(lm, LEFT_EYE)].mean()
    forehead = w[_region(lm, FOREHEAD)].mean()
    # Features at full weight, the forehead (a pulse region) scaled to pulse_weight (blurred edges).
    assert eyes > 0.95 and 0 < forehead < eyes * (settings.pulse_weight + 0.1)


def test_pattern_stays_within_budget_and_on_the_face(astronaut_crop):
    _, lm = astronaut_crop
    w = weight_map([lm], 128, CloakSettings())
    pattern = Pattern(w, CloakSettings(budget=BUDGET))
    with torch.no_grad():
        pattern.coarse.normal_(0, 50)   # far past tanh's knee
        pattern.fine.normal_(0, 50)
        p = pattern().numpy()
    assert np.abs(p).max() <= BUDGET + 1e-7
    assert np.abs(p).max() > 0.9 * BUDGET * w.max()
    assert float(np.abs(p)[:, w == 0].max()) == 0.0


def test_l2_steps_keep_the_energy_limit_and_follow_the_gradient(astronaut_crop):
    """The "l2" method spends a fixed energy (the face PSNR limit) where the gradient is
    large, instead of the whole budget everywhere as sign steps do."""
    _, lm = astronaut_crop
    w = weight_map([lm], 128, CloakSettings())
    s = CloakSettings(method="l2", budget=16 / 255, rms=6 / 255, step=0.5)
    pattern = SignPattern(w, s)
    target = torch.zeros(3, 128, 128)
    target[:, 40:70, 30:100] = 1.0           # only a band of pixels matters to the "recogniser"
    for i in range(30):
        p = pattern()
        pattern.step([-(p * target).sum()], [1.0], i / 30)
    with torch.no_grad():
        p = pattern().numpy()
    region = w > 0.5
    rms = float(np.sqrt((p[:, region] ** 2).mean()))
    assert rms <= 6 / 255 + 1e-6 and rms > 5 / 255
    assert np.abs(p).max() <= 16 / 255 + 1e-7
    band = np.zeros((128, 128), bool)
    band[40:70, 30:100] = True
    assert np.abs(p[:, band & region]).mean() > 5 * np.abs(p[:, ~band & region]).mean()
    sign = SignPattern(w, CloakSettings(budget=16 / 255))
    for i in range(30):
        sp = sign()
        sign.step([-(sp * target).sum()], [1.0], i / 30)
    with torch.no_grad():
        sp = sign().numpy()
    assert float(np.sqrt((sp[:, region] ** 2).mean())) > rms   # sign steps fill the whole L-inf budget where they move


def test_eot_views_are_seeded_and_carry_gradients(astronaut_crop):
    crop, _ = astronaut_crop
    x = torch.from_numpy(np.stack([crop, crop]))
    p = torch.full((3, 128, 128), 2 / 255, requires_grad=True)
    s = EotSettings(jpeg_share=1.0)
    a = cloaked_view(x, p, torch.Generator().manual_seed(3), s)
    b = cloaked_view(x, p, torch.Generator().manual_seed(3), s)
    c = cloaked_view(x, p, torch.Generator().manual_seed(4), s)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape == x.shape and float(a.detach().min()) >= 0.0 and float(a.detach().max()) <= 1.0
    a.mean().backward()
    assert p.grad is not None and float(p.grad.abs().sum()) > 0


def test_optimise_cloak_refuses_bad_crops():
    with pytest.raises(UserError, match="non-empty"):
        optimise_cloak(np.zeros((3, 128, 128), np.float32), CloakSettings())
    with pytest.raises(UserError, match=r"\[0, 1\]"):
        optimise_cloak(np.full((1, 3, 128, 128), 2.0, np.float32), CloakSettings())


def test_cloak_reaches_pixels_only_inside_the_face_oval(astronaut_bgr):
    pattern = np.full((3, 128, 128), BUDGET, np.float32)
    out, region = cloak_image(astronaut_bgr, pattern)
    lm = still_landmarks(astronaut_bgr)
    box, mask = oval_mask(lm, astronaut_bgr.shape[:2])
    outside = np.ones(astronaut_bgr.shape[:2], bool)
    outside[box[1]:box[3], box[0]:box[2]] = mask <= 0
    assert np.array_equal(out[outside], astronaut_bgr[outside])
    assert np.abs(out.astype(int) - astronaut_bgr).max() > 0


@pytest.mark.slow
def test_optimise_cloak_is_seeded_bounded_and_lowers_the_match(astronaut_crop):
    crop, lm = astronaut_crop
    crops = np.stack([crop, np.clip(crop * 0.9 + 0.05, 0, 1).astype(np.float32)])
    s = CloakSettings(steps=6, batch=2, check_every=3, seed=1, threads=2, budget=BUDGET)
    seen = []
    first = optimise_cloak(crops, s, landmarks=[lm, lm], progress=seen.append)
    second = optimise_cloak(crops, s, landmarks=[lm, lm])
    assert np.array_equal(first.pattern, second.pattern)
    assert first.pattern.dtype == np.float32 and first.pattern.shape == (3, 128, 128)
    assert 0 < np.abs(first.pattern).max() <= BUDGET + 1e-7
    assert [e["step"] for e in first.history] == [3, 6] and seen == first.history
    assert set(first.history[-1]["held_out_match"]) == {"dlib", "sface"}

    from livedeid.recognizers.base import get_recognizer
    from livedeid.recognizers.heads import RecognizerHead

    x = torch.from_numpy(crops)
    with torch.no_grad():
        for name in ("dlib", "sface"):
            head = RecognizerHead.from_recognizer(get_recognizer(name))
            clean = head(x)
            zero = head.score(head(x), clean).mean()   # the zero pattern: the clean crop itself
            cloaked = head.score(head((x + torch.from_numpy(first.pattern)).clamp(0, 1)), clean).mean()
            assert float(cloaked) < float(zero) - 0.02, name


def test_the_real_verification_decides_when_an_enrolment_stops(astronaut_crop):
    # dlib alone at 16/255 clears the held-out crop within a few steps; the callback stands
    # for the real recognisers' verdict and accepts the second pattern it is asked about.
    crop, lm = astronaut_crop
    crops = np.stack([crop, np.clip(crop * 0.9 + 0.05, 0, 1).astype(np.float32)])
    held = np.clip(crop[None] * 1.05, 0, 1).astype(np.float32)
    asked = []

    def accept(pattern):
        asked.append(pattern.copy())
        return len(asked) == 2

    s = CloakSettings(steps=30, batch=2, check_every=2, seed=1, recognizers=("dlib",), rms=16 / 255, budget=16 / 255)
    result = optimise_cloak(crops, s, landmarks=[lm, lm], held_out=held, accept=accept)
    history = result.history
    assert len(asked) == 2 and result.stopped_early and history[-1]["step"] < 30
    assert np.array_equal(result.pattern, asked[1])          # the accepted pattern, not the "best" check
    # Asked only where the surrogate matches no held-out crop to the centre; its answer is recorded.
    for entry in history:
        cleared = entry["held_out_match"]["dlib"]["plain"]["centre"] == 0.0
        assert ("accepted" in entry) == cleared
    assert [e["accepted"] for e in history if "accepted" in e] == [False, True]
    assert history[-1].get("last") is True and not any(e.get("last") for e in history[:-1])


def test_an_optimisation_past_its_time_limit_ends_at_the_next_check(astronaut_crop):
    crop, lm = astronaut_crop
    s = CloakSettings(steps=6, batch=1, check_every=2, recognizers=("dlib",), max_seconds=0.0)
    result = optimise_cloak(crop[None], s, landmarks=[lm])
    assert [e["step"] for e in result.history] == [2] and result.history[-1]["last"] is True
    assert not result.stopped_early and 0 < np.abs(result.pattern).max() <= s.budget


def test_an_enrolment_runs_to_verification_unless_told_its_steps():
    from livedeid.cloak.build import ENROL_SECONDS, ENROL_STEPS, default_settings

    s = default_settings(("dlib", "sface"), budget=BUDGET)
    assert (s.steps, s.max_seconds, s.budget) == (ENROL_STEPS, ENROL_SECONDS, BUDGET)
    s = default_settings(("dlib",), budget=BUDGET, steps=40)
    assert (s.steps, s.max_seconds, s.recognizers) == (40, None, ("dlib",))


@pytest.mark.slow
def test_verify_zero_pattern_reports_the_clean_match(astronaut_bgr):
    h, w = astronaut_bgr.shape[:2]
    gallery = [cv2.resize(astronaut_bgr, (w * 3 // 4, h * 3 // 4), interpolation=cv2.INTER_AREA),
               np.ascontiguousarray(astronaut_bgr[:, ::-1])]
    report = verify_cloak(np.zeros((3, 128, 128), np.float32), [astronaut_bgr], gallery)
    assert report["psnr_db"] == float("inf") and report["ssim"] == 1.0
    assert report["cloaked"] == report["probes"] == 1
    assert set(report["recognizers"]) == {"dlib", "sface"}
    for name, r in report["recognizers"].items():
        assert r["probes"] == 1 and r["detection"] == 1.0, name
        assert r["gallery_match"] == r["clean_gallery_match"] == 1.0, name
        assert r["same_photo_match"] == 1.0, name
    assert report["protects"] is False and report["target"] == 0.05
    with pytest.raises(UserError):
        verify_cloak(np.zeros((3, 128, 128), np.float32), [], gallery)
    # One verifier for many patterns gives each the figures verify_cloak gives it alone.
    verifier = CloakVerifier([astronaut_bgr], gallery)
    strong = np.random.default_rng(0).uniform(-BUDGET, BUDGET, (3, 128, 128)).astype(np.float32)
    assert verifier(np.zeros((3, 128, 128), np.float32)) == report
    assert verifier(strong) == verify_cloak(strong, [astronaut_bgr], gallery)


def test_leave_one_out_leaves_each_recogniser_out_once():
    from livedeid.cloak.protocol import _label, loo_keys

    assert loo_keys(("dlib",)) == {}
    assert loo_keys(("dlib", "sface")) == {"loo_no_dlib": ("sface",), "loo_no_sface": ("dlib",)}
    three = loo_keys(("dlib", "sface", "faceres"))
    assert three["loo_no_faceres"] == ("dlib", "sface") and len(three) == 3
    assert _label("loo_no_sface") == "without sface" and _label("cloak_h264_600") == "cloak h264 600k"


def test_the_person_specific_term_adds_the_positive_projection_on_the_centre_minus_the_population(astronaut_crop):
    """specific_directions: the unit direction of the person's centre minus the population's
    mean unit embedding; cloak_losses adds specific_weight times the views' positive
    projection on it, and nothing at weight 0."""
    import torch.nn.functional as F

    from livedeid.cloak.optimise import centre_embedding, cloak_losses, specific_directions
    from livedeid.recognizers.base import get_recognizer
    from livedeid.recognizers.heads import RecognizerHead

    crop, _ = astronaut_crop
    x = torch.from_numpy(np.stack([crop, np.clip(crop * 0.9 + 0.05, 0, 1).astype(np.float32)]))
    others = torch.from_numpy(np.ascontiguousarray(np.stack([crop[:, ::-1], crop[:, :, ::-1]])))  # not this face
    head = RecognizerHead.from_recognizer(get_recognizer("dlib"), crop_size=128)
    with torch.no_grad():
        emb = head(x)
        refs = {"dlib": (centre_embedding(head, emb), emb)}
        d = specific_directions([head], refs, others)["dlib"]
        expected = F.normalize(F.normalize(refs["dlib"][0], dim=-1) - F.normalize(head(others), dim=-1).mean(0), dim=-1)
        assert torch.allclose(d, expected) and abs(float(d.norm()) - 1) < 1e-5
        projection = F.normalize(emb, dim=-1) @ d
        assert float(projection.min()) > 0  # the person's own clean crops lie on their side
        idx = torch.arange(2)
        plain = cloak_losses([head], x, refs, idx, CloakSettings(specific_weight=0.0), {"dlib": d})[0]
        assert torch.equal(plain, cloak_losses([head], x, refs, idx, CloakSettings())[0])
        weighted = cloak_losses([head], x, refs, idx, CloakSettings(specific_weight=2.0), {"dlib": d})[0]
        assert torch.allclose(weighted, plain + 2.0 * F.relu(projection).mean())
    with pytest.raises(UserError, match="population"):  # a weight with nobody to compare against
        optimise_cloak(x.numpy(), CloakSettings(specific_weight=1.0, steps=1))
