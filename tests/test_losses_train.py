"""Training losses, data and loop (issue 4): fast checks on real parts (the dlib ResNet
port, real face photos from ../shared/data, MediaPipe tracking, ONNX Runtime)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import data_path

torch = pytest.importorskip("torch")

from livedeid.core import strict_json  # noqa: E402
from livedeid.recognizers.heads import RecognizerHead  # noqa: E402
from livedeid.training.losses import (  # noqa: E402
    DeidWeights,
    deid_loss,
    gallery_terms,
    pearson_loss,
    reconstruction_loss,
    residual_temporal_loss,
    rppg_pearson_loss,
)


# --------------------------------------------------------------------------------------
# losses
# --------------------------------------------------------------------------------------
def test_reconstruction_is_zero_for_identical_and_grows_with_noise():
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    assert float(reconstruction_loss(x, x)) == pytest.approx(0.0, abs=1e-6)
    small = (x + 2 / 255 * torch.randn_like(x)).clamp(0, 1)
    big = (x + 8 / 255 * torch.randn_like(x)).clamp(0, 1)
    assert 0 < float(reconstruction_loss(small, x)) < float(reconstruction_loss(big, x))


def test_pearson_loss_limits():
    t = torch.linspace(0, 4, 120)
    a = torch.sin(2 * torch.pi * 1.2 * t)[None]
    assert float(pearson_loss(a, a)) == pytest.approx(-1.0, abs=1e-6)
    assert float(pearson_loss(a, 3 * a + 5)) == pytest.approx(-1.0, abs=1e-6)  # scale/offset free
    assert float(pearson_loss(a, -a)) == pytest.approx(1.0, abs=1e-6)


def test_rppg_pearson_is_minus_one_for_an_untouched_pulse_video():
    # A pulsing skin patch: the protected sequence identical to the clean one keeps the pulse.
    fs, n = 30.0, 64
    pulse = torch.sin(2 * torch.pi * 1.3 * torch.arange(n) / fs)
    frames = 0.5 + 0.003 * pulse[:, None, None, None] * torch.tensor([0.4, 1.0, 0.7])[:, None, None]
    frames = frames.expand(n, 3, 16, 16)[None].contiguous()
    roi = torch.ones(1, 1, 16, 16)
    assert float(rppg_pearson_loss(frames, frames, roi, fs)) == pytest.approx(-1.0, abs=1e-4)
    # A residual whose colour flickers on the skin breaks it (a grey flicker would not:
    # POS projects intensity changes out by design).
    flicker = 0.01 * torch.randn(1, n, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    assert float(rppg_pearson_loss(frames, frames + flicker, roi, fs)) > -0.5


def test_residual_temporal_loss_only_sees_changes_over_time():
    roi = torch.ones(1, 1, 8, 8)
    steady = torch.full((1, 4, 3, 8, 8), 4 / 255)
    assert float(residual_temporal_loss(steady, roi)) == pytest.approx(0.0, abs=1e-9)
    changing = steady.clone()
    changing[:, 1::2] *= -1  # alternating +-4 levels
    assert float(residual_temporal_loss(changing, roi)) == pytest.approx(64.0, rel=1e-4)


def test_gallery_terms_reward_moving_away_from_the_true_identity():
    protos = torch.eye(4, 8)
    ident = torch.tensor([2])
    near = protos[2:3] + 0.05
    away = protos[0:1] + 0.05
    a_near, u_near, top_near = gallery_terms(near, protos, ident, 16.0)
    a_away, u_away, top_away = gallery_terms(away, protos, ident, 16.0)
    assert float(a_away) < float(a_near) and bool(top_near[0]) and not bool(top_away[0])
    uniform = gallery_terms(torch.zeros(1, 8) + 1e-3, protos, ident, 16.0)[1]
    assert float(uniform) < float(u_away)  # KL to uniform is smallest for an undecided softmax


@pytest.fixture(scope="module")
def two_people():
    """Aligned 128 crops of two photos of one person and one photo of another."""
    from livedeid.training.data import align_photo, centre_crop

    celebrities = data_path("faces", "celebrities")
    paths = [celebrities / "id01" / "img26.jpg", celebrities / "id01" / "img27.jpg",
             celebrities / "id02" / sorted(p.name for p in (celebrities / "id02").iterdir())[0]]
    crops = []
    for p in paths:
        crop, _ = align_photo(cv2.imread(str(p)))
        crops.append(centre_crop(crop))
    return torch.from_numpy(np.stack(crops).astype(np.float32) / 255.0).permute(0, 3, 1, 2).contiguous()


@pytest.fixture(scope="module")
def dlib_head():
    pytest.importorskip("dlib")
    from livedeid.recognizers.base import get_recognizer

    return RecognizerHead.from_recognizer(get_recognizer("dlib"))


@pytest.mark.data
@pytest.mark.slow
def test_deid_loss_is_lower_when_the_protected_face_is_someone_else(two_people, dlib_head):
    same, other = two_people[0:1], two_people[2:3]
    with torch.no_grad():
        protos = {"dlib": torch.stack([dlib_head(two_people[0:2]).mean(0), dlib_head(other)[0]])}
    ident = torch.tensor([0])
    w = DeidWeights()
    unchanged, info_u = deid_loss([dlib_head], same, same, ident, protos, w)
    swapped, info_s = deid_loss([dlib_head], other, same, ident, protos, w)
    assert float(swapped) < float(unchanged)
    # The recogniser itself agrees: the untouched crop matches itself, another person does not.
    assert info_u["dlib"]["self_match"] == 1.0 and info_s["dlib"]["self_match"] == 0.0
    # And the gradient points somewhere: the loss is differentiable in the protected crop.
    x = same.clone().requires_grad_(True)
    deid_loss([dlib_head], x, same, ident, protos, w)[0].backward()
    assert float(x.grad.abs().sum()) > 0


# --------------------------------------------------------------------------------------
# data
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_faces(tmp_path_factory):
    """A tiny labelled face folder (2 celebrities x 2 photos, 1 ORL person x 2 photos),
    symlinked from ../shared/data."""
    faces = data_path("faces")
    root = tmp_path_factory.mktemp("faces")
    for ds, person, n in (("celebrities", "id01", 2), ("celebrities", "id02", 2), ("orl", "s1", 2)):
        d = root / ds / person
        d.mkdir(parents=True)
        for p in sorted((faces / ds / person).iterdir(), key=lambda p: p.name)[:n]:
            (d / p.name).symlink_to(p)
    return root


@pytest.mark.data
def test_face_clips_carry_the_pulse_and_split_by_identity(tiny_faces, tmp_path):
    from livedeid.training.data import FaceClipSampler, prepare_faces, split_identities

    faces = prepare_faces(tiny_faces, tmp_path / "cache.npz")
    assert len(faces) == 6
    again = prepare_faces(tiny_faces, tmp_path / "cache.npz")  # from the cache
    assert [f.path for f in again] == [f.path for f in faces]
    train, test = split_identities([f.identity for f in faces], {"celebrities": 1}, seed=0)
    assert len(test) == 1 and test[0].startswith("celebrities/") and not set(train) & set(test)

    sampler = FaceClipSampler(faces, train)
    sampler.settings.noise_std = (0.0, 0.0)
    sampler.settings.flicker = 0.0
    # Head motion moves skin edges through the (fixed) region and would swamp a raw mean.
    sampler.settings.motion_px = sampler.settings.motion_deg = sampler.settings.motion_scale = 0.0
    sampler.settings.pulse_amplitude = (0.01, 0.01)
    batch = sampler.sample(3, 90, np.random.default_rng(0))
    assert batch.frames.shape == (3, 90, 3, 128, 128) and batch.frames.dtype == np.float32
    assert 0 <= batch.frames.min() and batch.frames.max() <= 1
    assert set(batch.identity.tolist()) <= set(range(len(train)))
    # The composite's oval: 1 on the cheeks, 0 in the corners, and it contains the skin.
    assert batch.oval.shape == (3, 1, 128, 128) and batch.oval[:, 0, 64, 64].min() > 0.9
    assert batch.oval[:, 0, :4, :4].max() == 0 and (batch.oval[batch.roi > 0] > 0).mean() > 0.95
    # The skin's mean green follows the true blood volume (reflectance drops as it rises).
    green = (batch.frames[:, :, 1] * batch.roi).sum((-2, -1)) / batch.roi.sum((-2, -1))   # (B, L)
    for g, p in zip(green, batch.pulse):
        assert np.corrcoef(g, p)[0, 1] < -0.5


def _write_pulse_video(path: Path, n: int, fs: float = 30.0, hr: float = 75.0):
    """A real face with a known pulse (the project's synthetic source), as frames."""
    from livedeid.io.synthetic import SyntheticPulseSource

    # flicker=0: synth normalises its slow light drift by its std, which blows up on clips
    # much shorter than the drift (here 1.3 s).
    src = SyntheticPulseSource(hr_bpm=hr, duration_s=n / fs, fps=fs, size=(320, 240), motion=0.3, seed=1,
                               flicker=0.0)
    return src, [fr.image for fr in src]


def test_ubfc_pure_and_folder_loaders_track_real_video(tmp_path):
    import av

    from livedeid.training.data import VideoClipSampler, pure_items, ubfc_items, video_folder_items

    n = 40
    src, frames = _write_pulse_video(tmp_path, n)
    # UBFC-rPPG (DATASET_2): subject1/vid.avi + ground_truth.txt (PPG, HR, time rows)
    sub = tmp_path / "ubfc" / "subject1"
    sub.mkdir(parents=True)
    with av.open(str(sub / "vid.avi"), "w") as c:
        st = c.add_stream("mjpeg", rate=30)
        st.width, st.height, st.pix_fmt = 320, 240, "yuvj420p"
        for img in frames:
            for pkt in st.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(pkt)
        for pkt in st.encode():
            c.mux(pkt)
    t = np.arange(n) / 30.0
    (sub / "ground_truth.txt").write_text("\n".join(" ".join(f"{v:.6e}" for v in row)
                                                    for row in (src.true_pulse, np.full(n, 75.0), t)))
    # PURE: 01-01/Image<ns>.png + 01-01.json
    pure = tmp_path / "pure"
    (pure / "01-01").mkdir(parents=True)
    for i, img in enumerate(frames):
        cv2.imwrite(str(pure / "01-01" / f"Image{int(t[i] * 1e9) + 10**9}.png"), img)
    (pure / "01-01.json").write_text(json.dumps({
        "/FullPackage": [{"Timestamp": int(ti * 1e9) + 10**9, "Value": {"waveform": float(v), "pulseRate": 75}}
                         for ti, v in zip(t, src.true_pulse)],
        "/Image": [{"Timestamp": int(ti * 1e9) + 10**9} for ti in t]}))

    for items in (ubfc_items(tmp_path / "ubfc"), pure_items(pure)):
        assert len(items) == 1 and items[0].ppg is not None
        sampler = VideoClipSampler(items, cache_dir=tmp_path / "cache")
        assert len(sampler.tracks[0][1]) >= n - 2  # the face is tracked in (nearly) every frame
        batch = sampler.sample(2, 16, np.random.default_rng(0))
        assert batch.frames.shape == (2, 16, 3, 128, 128) and batch.pulse.shape == (2, 16)
        assert batch.roi.sum() > 100 and abs(batch.fs - 30.0) < 0.5
        assert batch.oval.shape == (2, 1, 128, 128) and batch.oval.max() > 0.9
    # The generic loader: any folder of videos, no pulse reference.
    plain = video_folder_items(tmp_path / "ubfc")
    assert [it.name for it in plain] == ["subject1"] and plain[0].ppg is None


# --------------------------------------------------------------------------------------
# training loop + export
# --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def short_run(tiny_faces, tmp_path_factory):
    pytest.importorskip("dlib")
    from livedeid.training.config import load_config
    from livedeid.training.loop import train

    out = tmp_path_factory.mktemp("run")
    cfg = load_config(None, [f"out_dir={out}", f"data.faces_root={tiny_faces}", f"data.cache={out / 'c.npz'}",
                             "data.held_out={}", 'recognizers=["dlib"]', "batch=2", "outputs_per_clip=2",
                             "steps=16", "lr=0.003", "warmup_steps=2", "rppg_every=8", "rppg_outputs=24",
                             "ckpt_every=8", "log_every=4", "eval.enabled=false", "threads=2"])
    return cfg, train(cfg, progress=False)


@pytest.mark.data
@pytest.mark.slow
def test_short_training_lowers_the_loss_and_resumes(short_run):
    import csv

    cfg, result = short_run
    out = Path(cfg["out_dir"])
    rows = list(csv.DictReader(open(out / "log.csv")))
    assert len(rows) == 16
    # Rows of steps that also ran the Pearson batch (every 8th) carry an extra term.
    plain = [float(r["loss"]) for r in rows if (int(r["step"]) - 1) % 8 != 0]
    first, last = np.mean(plain[:4]), np.mean(plain[-4:])
    assert last < first
    ck = torch.load(out / "ckpt.pt", weights_only=True)
    assert ck["step"] == 16 and set(ck) == {"model", "optim", "step"}
    # Resuming past the end trains nothing more and keeps the log.
    from livedeid.training.loop import train

    cfg2 = dict(cfg)
    r2 = train(cfg2, progress=False)
    assert r2["steps"] == 16


def test_unknown_setting_is_refused():
    from livedeid.core.errors import UserError
    from livedeid.training.config import load_config

    with pytest.raises(UserError, match="unknown training setting"):
        load_config(None, ["lossss.alpha=1"])


@pytest.mark.data
@pytest.mark.slow
def test_trained_weights_export_with_onnx_parity(short_run, tmp_path):
    from livedeid.inference.manifest import load_spec
    from livedeid.training.export import export_model

    _, result = short_run
    lines = list(export_model(weights=Path(result["weights"]), out_dir=tmp_path, trained=True, notes="test"))
    parity = [line for line in lines if "parity" in line][0]
    assert float(parity.rsplit(" ", 1)[1]) <= 1e-4
    spec = load_spec(tmp_path / "deid.json")
    assert spec.trained and spec.onnx_path.is_file()


@pytest.mark.data
@pytest.mark.slow
def test_identity_branch_warm_starts_from_pixel_only_weights(short_run, tiny_faces, tmp_path):
    # A model with the identity branch, started from a pixel-only run's weights (step 0):
    # the branch's zero-initialised head makes it the same function, and its encoder holds
    # SFace's own weights.
    from livedeid.nets.autoencoder import load_weights
    from livedeid.training.config import load_config
    from livedeid.training.loop import train

    pytest.importorskip("onnxruntime")
    cfg0, first = short_run
    cfg = load_config(None, [f"out_dir={tmp_path / 'run'}", f"data.faces_root={tiny_faces}",
                             f"data.cache={tmp_path / 'c.npz'}", "data.held_out={}", 'recognizers=["sface"]',
                             "model.identity_branch=true", f"init_weights={first['weights']}", "steps=0",
                             "eval.enabled=false", "threads=2"])
    result = train(cfg, progress=False)
    pixel_only = load_weights(first["weights"], 8, cfg0["model"]["max_perturbation"])
    warm = load_weights(result["weights"], 8, cfg["model"]["max_perturbation"])
    assert warm.identity_branch and not pixel_only.identity_branch
    window = torch.rand(2, 8, 3, 128, 128, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert float((warm(window) - pixel_only(window)).abs().max()) < 1e-6
    assert float(warm.chip_grid.abs().max()) > 0.5          # the chip warp was set
    assert float(warm.ident.blocks["conv_1"][0].weight.abs().max()) > 0.0


@pytest.mark.data
@pytest.mark.slow
def test_init_weights_of_another_shape_are_refused(short_run, tiny_faces, tmp_path):
    from livedeid.core.errors import UserError
    from livedeid.training.config import load_config
    from livedeid.training.loop import train

    _, first = short_run
    cfg = load_config(None, [f"out_dir={tmp_path / 'run'}", f"data.faces_root={tiny_faces}",
                             f"data.cache={tmp_path / 'c.npz'}", "data.held_out={}", 'recognizers=["sface"]',
                             "model.width=16", f"init_weights={first['weights']}", "steps=0",
                             "eval.enabled=false"])
    with pytest.raises(UserError, match="init_weights"):
        train(cfg, progress=False)


@pytest.mark.data
@pytest.mark.slow
def test_a_pixel_only_student_learns_its_teachers_residual(tiny_faces, tmp_path):
    # Distillation (issue 16): a pixel-only student started from the shipped model's shared
    # layers (its identity branch dropped) is trained on the teacher's residual alone; the
    # recognisers are not run (beta 0), and the distance to the teacher falls.
    import csv

    from livedeid.inference.manifest import load_spec
    from livedeid.nets.autoencoder import load_weights
    from livedeid.training.config import load_config
    from livedeid.training.loop import train

    shipped = load_spec(Path(__file__).resolve().parents[1] / "engines" / "deid.json")
    teacher = shipped.weights_path
    if not load_weights(teacher, shipped.window, shipped.max_perturbation).identity_branch:
        pytest.skip("the shipped model has no identity branch: nothing to distil")
    cfg = load_config(None, [f"out_dir={tmp_path / 'run'}", f"data.faces_root={tiny_faces}",
                             f"data.cache={tmp_path / 'c.npz'}", "data.held_out={}", 'recognizers=["sface"]',
                             f"init_weights={teacher}", f"teacher={teacher}", "loss.alpha=0", "loss.beta=0",
                             "loss.gamma=0", "loss.distil=1", "batch=2", "steps=24", "lr=0.003",
                             "warmup_steps=2", "log_every=4", "eval.enabled=false", "threads=2"])
    result = train(cfg, progress=False)
    student = load_weights(result["weights"], 8, cfg["model"]["max_perturbation"])
    assert not student.identity_branch
    rows = list(csv.DictReader(open(tmp_path / "run" / "log.csv")))
    distil = [float(r["distil"]) for r in rows]
    assert all(r["deid"] == "0.0000" and r["sface_self_match"] == "" for r in rows)  # recognisers not run
    assert np.mean(distil[-6:]) < 0.8 * np.mean(distil[:6]), distil


def test_distillation_settings_are_checked(tmp_path):
    from livedeid.core.errors import UserError
    from livedeid.training.config import load_config
    from livedeid.training.loop import build_teacher

    with pytest.raises(UserError, match="needs a teacher"):
        build_teacher(load_config(None, ["loss.distil=1"]), "cpu")
    assert build_teacher(load_config(None, []), "cpu") is None
    pickled = tmp_path / "teacher.pt"
    torch.save({"model": object()}, pickled)       # a pickle payload, not a state dict
    with pytest.raises(UserError, match="cannot load teacher"):
        build_teacher(load_config(None, [f"teacher={pickled}", "loss.distil=1"]), "cpu")


@pytest.mark.data
@pytest.mark.slow
def test_held_out_evaluation_writes_what_the_export_reads(short_run, tmp_path):
    # The trainer's held-out evaluation on the tiny set (every person taken as held out):
    # the harness of `livedeid eval` underneath, eval.json's fields on top.
    from livedeid.training.export import held_out_self_match
    from livedeid.training.heldout import evaluate, format_report

    cfg, result = short_run
    cfg = {**cfg, "eval": {**cfg["eval"], "max_photos_per_id": 2, "hr_clips": 1, "hr_seconds": 6.0}}
    people = ["celebrities/id01", "celebrities/id02", "orl/s1"]
    report = evaluate(Path(result["weights"]), cfg, people, names=("sface",), out=tmp_path / "written.json")
    # Strict JSON on disk: a measurement that could not be made (NaN) is null there.
    assert json.loads((tmp_path / "written.json").read_text()) == json.loads(strict_json.dumps(report))
    assert report["weights_sha256"] == hashlib.sha256(Path(result["weights"]).read_bytes()).hexdigest()
    assert report["held_out_ids"] == people and report["photos"] + len(report["no_region"]) == 6
    methods = report["methods"]
    assert list(methods)[:2] == ["trained", "untrained"]
    assert {m.split(":")[0] for m in list(methods)[2:]} == {"blur", "pixelate", "noise"}
    trained = methods["trained"]
    assert 25.0 < trained["psnr"] < 80.0 and trained["tracked"] == report["photos"]
    sface = trained["sface"]
    assert 0.0 <= sface["self_match"] <= 1.0 and sface["clean_top1"] >= 2 / 3
    assert sface["chance"] == pytest.approx(1 / 3, abs=1e-3)
    assert set(trained["by_dataset"]) == {"celebrities", "orl"}
    # Noise runs at the model's PSNR, measured the same way.
    noise = next(v for k, v in methods.items() if k.startswith("noise"))
    assert noise["psnr"] == pytest.approx(trained["psnr"], abs=0.5)
    (hr,) = report["hr"]
    assert hr["input_bpm"] is not None and abs(hr["input_bpm"] - hr["true_bpm"]) < 5.0
    assert isinstance(report["better_than_untrained"], bool)
    (tmp_path / "eval.json").write_text(json.dumps(report))
    assert held_out_self_match(tmp_path / "eval.json") == {"sface": sface["self_match"]}
    assert "trained" in format_report(report)


def test_export_rule_needs_fewer_matches_and_kept_quality():
    from livedeid.training.heldout import better_than_untrained

    def report(t_dlib, t_sface, psnr=34.0, hr_change=0.1):
        return {"methods": {"trained": {"psnr": psnr, "dlib": {"self_match": t_dlib, "faces": 26},
                                        "sface": {"self_match": t_sface, "faces": 26}},
                            "untrained": {"psnr": 44.0, "dlib": {"self_match": 1.0}, "sface": {"self_match": 0.9}}},
                "hr": [{"change_bpm": hr_change}]}

    names = ["dlib", "sface"]
    assert better_than_untrained(report(0.8, 0.9), names)          # fewer for one, more for none
    assert not better_than_untrained(report(1.0, 0.9), names)      # no gain
    assert not better_than_untrained(report(0.5, 0.95), names)     # worse for SFace
    assert not better_than_untrained(report(0.5, 0.5, psnr=31.0), names)
    assert not better_than_untrained(report(0.5, 0.5, hr_change=1.5), names)
