"""The one protection status (``livedeid.pipeline.status``): each state from what was
measured, plain words for the patient, numbers only in the details; and `run`'s line."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from livedeid.inference.manifest import load_spec
from livedeid.io.profile import DEFAULT_BUDGET, Profile
from livedeid.pipeline import status as st

JARGON = ("cosine", "distance", "dlib", "sface", "MODEL_CARD", "engines/", "p50", "p95")


def profile(protects: bool, dlib: float, sface: float, created: str = "2025-05-03T10:11:12+00:00") -> Profile:
    recs = {"dlib": {"gallery_match": dlib, "detection": 1.0}, "sface": {"gallery_match": sface, "detection": 1.0}}
    return Profile(name="ada", pattern=np.zeros((3, 128, 128), np.float32), budget=DEFAULT_BUDGET, created=created,
                   verification={"recognizers": recs, "protects": protects, "target": 0.05, "probes": 12})


@pytest.fixture(scope="module")
def shipped():
    return load_spec()


def assert_plain(text: str) -> None:
    low = text.lower()
    assert not [w for w in JARGON if w.lower() in low], text


def test_a_verified_cloak_is_protected_and_says_when(shipped):
    s = st.protection_status(shipped, profile(True, 0.0, 0.04))
    assert s.state == st.PROTECTED and s.colour == st.COLOURS[st.PROTECTED]
    assert "3 May 2025" in s.summary and s.verified_on == "3 May 2025"
    assert_plain(s.summary)
    assert "dlib 0 %" in s.details and "SFace 4 %" in s.details and "12 pictures" in s.details


def test_a_cloak_that_missed_its_target_is_partly_protected_with_its_numbers(shipped):
    # "protects" is the verification's verdict: a record saying False is never "protected",
    # even if the figures look fine (e.g. a recogniser found no cloaked face at all).
    s = st.protection_status(shipped, profile(False, 0.08, 0.25))
    assert s.state == st.PARTLY and "25 %" in s.summary and "3 May 2025" in s.summary
    assert_plain(s.summary)
    assert "dlib 8 %, SFace 25 %" in s.details
    assert st.protection_status(shipped, profile(False, 0.0, 0.0)).state == st.PARTLY


def test_a_verified_cloak_the_live_check_recognises_is_only_partly_protected(shipped):
    s = st.protection_status(shipped, profile(True, 0.0, 0.0), recognised_now=("sface",))
    assert s.state == st.PARTLY and "live check" in s.summary and "SFace matched" in s.details


def test_the_generic_model_is_partly_protected_with_the_manifests_numbers(shipped):
    assert shipped.trained and shipped.held_out_self_match  # the shipped model: measured, above target
    s = st.protection_status(shipped, None)
    shares = sorted(round(v * 100) for v in shipped.held_out_self_match.values())
    assert s.state == st.PARTLY and f"{shares[0]}-{shares[-1]} %" in s.summary
    assert_plain(s.summary)
    for name, share in shipped.held_out_self_match.items():
        assert f"{st.RECOGNISER_LABELS[name]} {share * 100:.0f} %" in s.details
    # Even a model that met its target on held-out people was not checked for this person.
    good = dataclasses.replace(shipped, held_out_self_match={"dlib": 0.01, "sface": 0.02})
    assert st.protection_status(good, None).state == st.PARTLY


def test_an_unmeasured_model_or_protection_off_is_not_protected(shipped):
    for spec in (dataclasses.replace(shipped, trained=False), dataclasses.replace(shipped, held_out_self_match=None),
                 dataclasses.replace(shipped, held_out_self_match={"dlib": 0.0})):
        s = st.protection_status(spec, None)
        assert s.state == st.NOT_PROTECTED and "visible" in s.summary
    off = st.protection_status(shipped, profile(True, 0.0, 0.0), protect=False)
    assert off.state == st.NOT_PROTECTED and "receives nothing" in off.summary
    sent = st.protection_status(shipped, None, protect=False, sending_unprotected=True)
    assert "being sent to the video call" in sent.summary and sent.colour == st.COLOURS[st.NOT_PROTECTED]


def test_a_hidden_face_is_the_status_while_it_lasts(shipped):
    s = st.protection_status(shipped, profile(True, 0.0, 0.0), hidden_regions=1)
    assert s.state == st.HIDDEN and s.underlying == st.PROTECTED and "hidden" in s.summary
    whole = st.protection_status(shipped, None, whole_picture_hidden=True)
    assert whole.state == st.HIDDEN and "until your face is found" in whole.summary
    # Protection off hides nothing.
    assert st.protection_status(shipped, None, protect=False, hidden_regions=2).state == st.NOT_PROTECTED


def test_only_protected_is_green():
    greens = [s for s, c in st.COLOURS.items() if int(c[3:5], 16) > max(int(c[1:3], 16), int(c[5:7], 16))]
    assert greens == [st.PROTECTED]


def test_status_changes_are_reported_once_they_hold(shipped):
    partly = st.protection_status(shipped, None)
    hidden = st.protection_status(shipped, None, hidden_regions=1)
    changes = st.StatusChanges(hold_s=0.5)
    assert changes.update(partly, 0.0) is partly          # the first one at once
    assert changes.update(hidden, 1.0) is None            # a blink of hiding...
    assert changes.update(partly, 1.1) is None            # ...is not reported
    assert changes.update(hidden, 2.0) is None
    assert changes.update(hidden, 2.6) is hidden          # held 0.6 s: reported once
    assert changes.update(hidden, 3.0) is None
    assert changes.show(partly) is partly and changes.shown is partly


# -- `livedeid run` says the same, at start and when it changes --------------------------------------
def _run(tmp_path, capsys, *extra) -> list[str]:
    from livedeid.cli.main import main

    rc = main(["run", "--camera", "synthetic", "--no-virtual-camera", "--no-refine", "--width", "320",
               "--height", "240", "--duration", "3", "--engine", "onnxruntime", *extra])
    err = capsys.readouterr().err
    assert rc == 0, err
    return [line for line in err.splitlines() if line.startswith("protection: ")]


def test_run_prints_the_status_at_start(tmp_path, capsys, shipped):
    from livedeid.io.profile import save_profile

    path = save_profile(profile(True, 0.0, 0.02), tmp_path / "ada.npz")
    lines = _run(tmp_path, capsys, "--profile", str(path))
    assert lines[0] == st.protection_status(shipped, profile(True, 0.0, 0.02)).line()
    assert lines[0].startswith("protection: PROTECTED - Your personal cloak was checked for you on 3 May 2025")


def test_run_prints_the_status_when_it_changes(tmp_path, capsys, shipped):
    from livedeid.io.profile import save_profile

    # A cloak whose verification missed its target, with --hide-unverified: its wearer (the
    # synthetic face) is hidden by the fail-closed policy, so the status turns to hidden.
    path = save_profile(profile(False, 0.3, 0.5), tmp_path / "ada.npz")
    lines = _run(tmp_path, capsys, "--profile", str(path), "--hide-unverified")
    assert lines[0].startswith("protection: PARTLY PROTECTED - ") and "50 %" in lines[0]
    assert lines[1].startswith("protection: HIDDEN - ")
    assert len(lines) <= 3, lines  # the start guard's hide may show first; no flicker after that
