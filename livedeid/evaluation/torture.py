"""Torture clips: short videos of real faces under the conditions that break face trackers.

Each clip is made from photos of real people (``../shared/data/faces``, see
:func:`livedeid.evaluation.photos.list_face_images`) animated by the synthetic source's face layer
(:class:`livedeid.io.synthetic.SyntheticPulseSource`: the photo's head region with its pulse,
warped by a head pose) over a textured wall, and written as a lossless video file, so the
pipeline reads exactly the pixels the ground truth describes.

One scenario per failure mode (:data:`SCENARIOS`, a table read by one renderer): fast
head turns, large per-frame jumps, motion blur, a hand over half the face, faces entering
and leaving, several people, very dark and overexposed light, near-profile views, tiny
faces, dropped/duplicated frames with jittered timestamps, and the moments a tracker
loses a face that is still (or again) there: hard cuts between people, a camera switch, a
face leaving and coming back on the other side, a jump across the frame. Everything is
seeded.

Ground truth per written frame (:class:`FrameTruth`): the timestamp written to the file,
the moment of the scene it shows, and for every face its identity, the bounding box of
its face oval in frame pixels, how much of that box is inside the frame and how much of
the oval the hand covers.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.face_regions import FACE_OVAL, fill_polygons, polygon_points
from livedeid.evaluation.photos import list_face_images
from livedeid.io.synthetic import Motion, SyntheticPulseSource, background_image, blend_layer, pose_homography

FPS = 30.0
SIZE = (640, 360)  # width, height: small enough for the whole set to run on a CPU
# A face counts as visible when at least half of its oval's box is inside the frame: half
# a face is what the hand scenario leaves too, and people are recognised from that.
MIN_VISIBLE = 0.5
PTS_PER_SECOND = 90000  # file time base fine enough to keep the jittered timestamps exact
SKIN_TONES_BGR = ((150, 180, 225), (115, 150, 200), (80, 110, 160), (60, 80, 115))


@dataclass(frozen=True)
class Scenario:
    """One torture condition. Motion terms add up; fractions are of the frame size."""

    name: str
    what: str                      # one line for reports
    seconds: float = 3.0
    faces: int = 1                 # different people in the clip
    face_height: float = 0.42      # face-oval height / frame height
    drift: float = 0.04            # slow wandering (fraction of the frame height)
    sweep: tuple[float, float] = (0.0, 0.0)  # fast sideways swing: (fraction of the width, Hz)
    jump_every_s: float = 0.0      # the head teleports to another spot this often (0: never)
    turn: tuple[float, float] = (0.0, 0.0)   # head turns: (peak yaw in degrees, Hz)
    yaw_deg: float = 0.0           # constant yaw (near profile)
    roll_deg: float = 4.0
    path: tuple[tuple[float, float], ...] = ()  # (clip fraction, centre x / width) keyframes
    exposure: int = 1              # sub-frames averaged into one frame (motion blur)
    gain: float = 1.0              # light level; the sensor clips at 255
    noise: float = 2.0             # sensor noise, 8-bit levels
    hand: bool = False             # a hand slides over half of the face and away again
    drops: bool = False            # dropped and duplicated frames, jittered timestamps
    # Shots of a clip with cuts: (start as a fraction of the clip, which face, light gain,
    # face scale, centre x / width). Only that face is shown, over a background of its own.
    shots: tuple[tuple[float, int, float, float, float], ...] = ()


SCENARIOS: tuple[Scenario, ...] = (
    Scenario("fast_turns", "head turns of +-60 deg at 1.2 Hz with roll", turn=(60.0, 1.2), roll_deg=15.0),
    Scenario("jumps", "head teleports 130-260 px between two frames every 0.4 s", jump_every_s=0.4),
    Scenario("motion_blur", "fast sideways swing (up to 40 px/frame) under an open shutter",
             sweep=(0.3, 1.0), exposure=8),
    Scenario("hand_occlusion", "a skin-coloured hand slides over half of the face", hand=True),
    Scenario("enter_leave", "the face walks in from the left and out to the right", seconds=3.5,
             path=((0.0, -0.45), (0.15, -0.45), (0.4, 0.5), (0.6, 0.5), (0.85, 1.45), (1.0, 1.45))),
    Scenario("multi_face", "three different people side by side", faces=3, face_height=0.3),
    Scenario("dark", "very dark, noisy light (gain 0.15)", gain=0.15, noise=4.0),
    Scenario("overexposed", "blown-out light (gain 2.2, clipped)", gain=2.2),
    Scenario("near_profile", "head turned 60-80 deg (near profile)", yaw_deg=70.0, turn=(10.0, 0.5)),
    Scenario("tiny", "face oval about 30 px tall (under 40 px wide)", face_height=0.085),
    Scenario("dropped_frames_jitter", "frames skipped and repeated, timestamps jittered +-12 ms",
             drops=True, turn=(30.0, 0.7)),
    Scenario("cuts", "hard cuts between three different people, each elsewhere over a new background",
             faces=3, shots=((0.0, 0, 1.0, 1.0, 0.5), (1 / 3, 1, 1.0, 1.0, 0.3), (2 / 3, 2, 1.0, 1.0, 0.7))),
    Scenario("camera_switch", "the call switches camera: darker light, smaller face, elsewhere, new room",
             shots=((0.0, 0, 1.0, 1.0, 0.5), (0.5, 0, 0.55, 0.7, 0.3))),
    Scenario("leave_reenter", "the face walks out to the right and comes back in from the left", seconds=3.5,
             path=((0.0, 0.5), (0.25, 1.45), (0.45, 1.45), (0.4501, -0.45), (0.7, 0.5), (1.0, 0.5))),
    Scenario("jump_across", "the same person jumps from one side of the frame to the other and back",
             path=((0.0, 0.25), (0.33, 0.25), (0.3301, 0.75), (0.66, 0.75), (0.6601, 0.25), (1.0, 0.25))),
)
SCENARIOS_BY_NAME = {s.name: s for s in SCENARIOS}


@dataclass
class FaceTruth:
    identity: str
    box: tuple[int, int, int, int]  # face-oval box (x0, y0, x1, y1), may reach past the frame
    visible: float                  # fraction of the box inside the frame
    occluded: float = 0.0           # fraction of the oval under the hand

    def in_frame(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The box clipped to a (width, height) frame."""
        x0, y0, x1, y1 = self.box
        return max(x0, 0), max(y0, 0), min(x1, size[0]), min(y1, size[1])


@dataclass
class FrameTruth:
    index: int            # frame number in the file
    timestamp: float      # seconds, as written to the file
    scene_time: float     # moment of the scene shown (a repeated frame repeats it)
    faces: list[FaceTruth] = field(default_factory=list)

    def visible_faces(self) -> list[FaceTruth]:
        return [f for f in self.faces if f.visible >= MIN_VISIBLE]


@dataclass
class Clip:
    scenario: Scenario
    path: Path
    fps: float
    size: tuple[int, int]
    photos: dict[str, Path]   # identity -> the clean photo the face was made from
    frames: list[FrameTruth]
    seed: int                 # make_clip's seed: the same scenario and people remake the clip

    def write_truth(self, path: Path) -> None:
        data = {"scenario": asdict(self.scenario), "seed": self.seed, "video": self.path.name, "fps": self.fps,
                "size": list(self.size), "photos": {k: str(v) for k, v in self.photos.items()},
                "frames": [asdict(f) for f in self.frames]}
        path.write_text(json.dumps(data, indent=1))


def pick_people(faces_root: Path, n: int, rng: np.random.Generator,
                only: list[str] | None = None) -> list[tuple[str, Path]]:
    """``n`` different people, one photo each, among the colour photos large enough to
    make a 150 px face (the celebrities; ORL's 92x112 greyscale photos are too small);
    with ``only``, among those identities (e.g. the people a model was not trained on)."""
    by_person: dict[str, list[Path]] = {}
    for photo in list_face_images(faces_root):
        if photo.identity.startswith("celebrities/") and (not only or photo.identity in only):
            by_person.setdefault(photo.identity, []).append(photo.path)
    if len(by_person) < n:
        raise UserError(f"need photos of {n} different people under {faces_root}/celebrities, "
                        f"found {len(by_person)}")
    people = sorted(by_person)
    chosen = rng.choice(len(people), size=n, replace=False)
    return [(people[k], by_person[people[k]][rng.integers(len(by_person[people[k]]))]) for k in chosen]


def _timeline(sc: Scenario, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(timestamps, scene times) of the written frames. With ``drops`` a camera misses
    frames (the scene jumps ahead and the timestamps show the gap), re-delivers its last
    buffer (the scene repeats under a new timestamp) and stamps with jitter."""
    n = int(round(sc.seconds * FPS))
    if not sc.drops:
        t = np.arange(n) / FPS
        return t, t.copy()
    step = rng.choice([1, 2, 3], size=n, p=[0.82, 0.12, 0.06])  # 2, 3: one or two frames missed
    repeat = (step == 1) & (rng.random(n) < 0.12)               # the last buffer delivered again
    step[0], repeat[0] = 0, False
    slot = np.cumsum(step)
    scene_slot = slot.copy()
    for k in np.flatnonzero(repeat):
        scene_slot[k] = scene_slot[k - 1]
    # +-12 ms stays under half a frame period, so timestamps keep increasing.
    jitter = np.clip(rng.normal(0.0, 0.005, n), -0.012, 0.012)
    jitter[0] = 0.0
    return slot / FPS + jitter, scene_slot / FPS


def _wave(rng: np.random.Generator, t: np.ndarray, parts: int = 3) -> np.ndarray:
    """Smooth random motion in [-1, 1]: a few slow sinusoids."""
    freq = rng.uniform(0.15, 0.5, parts)
    phase = rng.uniform(0, 2 * np.pi, parts)
    amp = rng.uniform(0.5, 1.0, parts)
    return sum(a * np.sin(2 * np.pi * f * t + p) for a, f, p in zip(amp, freq, phase)) / amp.sum()


def _jump_offsets(sc: Scenario, rng: np.random.Generator, t: np.ndarray, home: np.ndarray) -> np.ndarray:
    """Piecewise-constant (dx, dy): every ``jump_every_s`` the head lands 130-260 px away."""
    w, h = SIZE
    times = np.arange(sc.jump_every_s, sc.seconds + 1.0, sc.jump_every_s)
    spots = [home]
    for _ in times:
        while True:
            p = np.array([rng.uniform(0.22, 0.78) * w, rng.uniform(0.4, 0.6) * h])
            if 130 <= np.linalg.norm(p - spots[-1]) <= 260:
                break
        spots.append(p)
    return np.asarray(spots)[np.searchsorted(times, t, side="right")] - home


def _poses(sc: Scenario, rng: np.random.Generator, k: int, t: np.ndarray) -> np.ndarray:
    """Head pose of face ``k`` at times ``t`` (any shape): (..., 5) = x, y, roll, scale, yaw.
    Drawn for all times at once, so the sub-frames of a blurred exposure lie on one path."""
    w, h = SIZE
    home = np.array([w * (k + 1) / (sc.faces + 1), h * 0.5])
    x = np.interp(t / sc.seconds, *zip(*sc.path)) * w if sc.path else np.full_like(t, home[0])
    x = x + sc.drift * h * _wave(rng, t)
    y = home[1] + sc.drift * h * _wave(rng, t)
    if sc.sweep[0]:
        x = x + sc.sweep[0] * w * np.sin(2 * np.pi * sc.sweep[1] * t + rng.uniform(0, 2 * np.pi))
    if sc.jump_every_s:
        d = _jump_offsets(sc, rng, t, home)
        x, y = x + d[..., 0], y + d[..., 1]
    roll = sc.roll_deg * _wave(rng, t)
    scale = 1.0 + 0.05 * _wave(rng, t)
    yaw = rng.choice([-1.0, 1.0]) * sc.yaw_deg + sc.turn[0] * np.sin(2 * np.pi * sc.turn[1] * t
                                                                      + rng.uniform(0, 2 * np.pi))
    return np.stack([x, y, roll, scale, yaw], axis=-1)


def _shot_index(sc: Scenario, times: np.ndarray) -> np.ndarray:
    """The shot (index into ``sc.shots``) each scene time falls in; zeros without shots."""
    if not sc.shots:
        return np.zeros(times.shape, int)
    starts = np.array([shot[0] for shot in sc.shots]) * sc.seconds
    return np.clip(np.searchsorted(starts, times, side="right") - 1, 0, len(sc.shots) - 1)


def _hand_cover(t: float, seconds: float) -> float:
    """How far the hand is over the face: slides in, stays, slides out."""
    return float(np.interp(t / seconds, (0.0, 0.15, 0.3, 0.75, 0.9, 1.0), (0.0, 0.0, 1.0, 1.0, 0.0, 0.0)))


def _hand_alpha(oval: np.ndarray, cover: float) -> np.ndarray | None:
    """Alpha (H, W) of a hand (palm, four fingers up, thumb) over the image-left half of
    the face whose oval is ``oval`` (frame points), slid ``1 - cover`` of a face width out
    to the left; None when it is out of view."""
    if cover <= 0:
        return None
    (x0, y0), (x1, y1) = oval.min(axis=0), oval.max(axis=0)
    fw, fh = x1 - x0, y1 - y0
    hx = (x0 + x1) / 2 - 0.22 * fw - 1.3 * fw * (1.0 - cover)
    hy = (y0 + y1) / 2
    shapes = [((hx, hy + 0.18 * fh), (0.28 * fw, 0.3 * fh), 0.0),             # palm
              ((hx + 0.33 * fw, hy + 0.1 * fh), (0.07 * fw, 0.2 * fh), -35.0)]  # thumb
    for dx, angle in ((-0.2, -8.0), (-0.07, -3.0), (0.06, 3.0), (0.18, 8.0)):
        shapes.append(((hx + dx * fw, hy - 0.18 * fh), (0.065 * fw, 0.26 * fh), angle))
    alpha = np.zeros((SIZE[1], SIZE[0]), np.float32)
    for (cx, cy), (ax, ay), angle in shapes:
        cv2.ellipse(alpha, ((float(cx), float(cy)), (float(2 * ax), float(2 * ay)), angle), 1.0, -1)
    if not alpha.any():
        return None
    return cv2.GaussianBlur(alpha, (0, 0), max(0.6, 0.01 * fw))


def _paint_hand(canvas: np.ndarray, alpha: np.ndarray, tone: np.ndarray) -> None:
    # Light from above: the hand darkens downwards, as skin under a ceiling lamp does.
    shade = np.linspace(1.08, 0.82, canvas.shape[0], dtype=np.float32)[:, None, None]
    canvas *= 1.0 - alpha[..., None]
    canvas += tone * shade * alpha[..., None]


def _face_truth(identity: str, oval: np.ndarray, hand: np.ndarray | None) -> FaceTruth:
    w, h = SIZE
    x0, y0 = np.floor(oval.min(axis=0)).astype(int)
    x1, y1 = np.ceil(oval.max(axis=0)).astype(int)
    inside = max(0, min(x1, w) - max(x0, 0)) * max(0, min(y1, h) - max(y0, 0))
    visible = inside / max(1, (x1 - x0) * (y1 - y0))
    occluded = 0.0
    if hand is not None:
        mask = fill_polygons(np.zeros((h, w), np.uint8), [oval], 1)
        area = int(mask.sum())
        occluded = float((hand[mask > 0] > 0.5).sum() / area) if area else 0.0
    return FaceTruth(identity, (int(x0), int(y0), int(x1), int(y1)), round(float(visible), 4), round(occluded, 4))


class _Face:
    """One person: the synthetic source's face layer (photo, head region, pulse) and the
    face oval in layer pixels."""

    def __init__(self, identity: str, photo: Path, sc: Scenario, rng: np.random.Generator, scene_seconds: float):
        self.identity, self.photo = identity, photo
        self.source = SyntheticPulseSource(
            face=photo, hr_bpm=float(rng.uniform(55, 100)), duration_s=scene_seconds, fps=FPS, size=SIZE,
            motion=Motion.none(), flicker=0.0, noise_std=0.0, background="plain",
            face_fraction=sc.face_height, seed=int(rng.integers(1 << 31)))
        self.oval_layer = polygon_points(self.source.landmarks_layer, FACE_OVAL)

    def place(self, canvas: np.ndarray, t: float, pose: np.ndarray) -> np.ndarray:
        """Blend the face at scene time ``t`` and ``pose`` into ``canvas``; returns its oval
        in frame pixels."""
        layer = self.source.face_layer(min(int(round(t * FPS)), self.source.frame_count - 1))
        h_mat = pose_homography(layer.shape[:2], *pose)
        pasted = blend_layer(layer, h_mat, canvas)
        if pasted is not None:
            (x0, y0, x1, y1), blend = pasted
            canvas[y0:y1, x0:x1] = blend
        return cv2.perspectiveTransform(self.oval_layer[None].astype(np.float64), h_mat)[0]


def make_clip(sc: Scenario, people: list[tuple[str, Path]], out_dir: str | Path, seed: int = 0) -> Clip:
    """Render scenario ``sc`` with ``people`` ((identity, photo) pairs, one per face) to
    ``out_dir/<name>.mp4`` (lossless H.264 RGB) plus its ground truth ``<name>.json``."""
    import av

    from livedeid.io.sinks import CODECS

    if len(people) != sc.faces:
        raise ValueError(f"scenario {sc.name} needs {sc.faces} people, got {len(people)}")
    rng = np.random.default_rng(seed)
    stamps, scene_times = _timeline(sc, rng)
    faces = [_Face(identity, photo, sc, rng, float(scene_times[-1]) + 2.0 / FPS) for identity, photo in people]
    # Column 0: the frame's own moment (ground truth); then the sub-frames an open
    # shutter integrates over one frame period (just the moment itself without blur).
    offsets = ((np.arange(sc.exposure) + 0.5) / sc.exposure - 0.5) / FPS
    times = scene_times[:, None] + np.concatenate([[0.0], offsets])[None, :]
    poses = [_poses(sc, rng, k, times) for k in range(len(faces))]
    background = background_image(rng, SIZE, "textured")
    shot_of = _shot_index(sc, times)
    if sc.shots:
        backgrounds = [background] + [background_image(rng, SIZE, "textured") for _ in sc.shots[1:]]
        for k, (_, face, _, scale, x) in enumerate(sc.shots):
            here = shot_of == k
            poses[face][here, 0] += x * SIZE[0] - SIZE[0] * (face + 1) / (sc.faces + 1)
            poses[face][here, 3] *= scale
    tone = np.array(SKIN_TONES_BGR[rng.integers(len(SKIN_TONES_BGR))], np.float32)
    noise_seed = int(rng.integers(1 << 31))

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{sc.name}.mp4"
    codec, pix_fmt, options = CODECS["lossless"]
    truth = []
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream(codec, rate=Fraction(FPS).limit_denominator(1001), options=dict(options))
        stream.width, stream.height, stream.pix_fmt = SIZE[0], SIZE[1], pix_fmt
        stream.codec_context.time_base = Fraction(1, PTS_PER_SECOND)
        for i, (stamp, row) in enumerate(zip(stamps, times)):
            scene = np.zeros((SIZE[1], SIZE[0], 3), np.float32)
            gain = sc.gain
            for j in range(1, len(row)):
                shown, gain, canvas = range(len(faces)), sc.gain, background.copy()
                if sc.shots:
                    shot = sc.shots[shot_of[i, j]]
                    shown, gain, canvas = (shot[1],), sc.gain * shot[2], backgrounds[shot_of[i, j]].copy()
                ovals = [faces[k].place(canvas, row[j], poses[k][i, j]) for k in shown]
                hand = _hand_alpha(ovals[0], _hand_cover(row[j], sc.seconds)) if sc.hand else None
                if hand is not None:
                    _paint_hand(canvas, hand, tone)
                scene += canvas
            scene *= gain / (len(row) - 1)
            # Sensor noise keyed to the scene moment: a re-delivered buffer repeats it exactly.
            rng_noise = np.random.default_rng([noise_seed, int(round(row[0] * FPS))])
            scene += sc.noise * rng_noise.standard_normal(scene.shape, dtype=np.float32)
            image = np.clip(np.rint(scene), 0, 255).astype(np.uint8)
            if sc.exposure > 1:  # the truth is the scene at the middle of the exposure
                ovals = [faces[k].place(background.copy(), row[0], poses[k][i, 0]) for k in shown]
                hand = _hand_alpha(ovals[0], _hand_cover(row[0], sc.seconds)) if sc.hand else None
            faces_truth = [_face_truth(faces[k].identity, oval, hand if n == 0 else None)
                           for n, (k, oval) in enumerate(zip(shown, ovals))]
            truth.append(FrameTruth(i, round(float(stamp), 6), round(float(row[0]), 6), faces_truth))
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts = int(round(stamp * PTS_PER_SECOND))
            frame.time_base = Fraction(1, PTS_PER_SECOND)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    clip = Clip(sc, path, FPS, SIZE, {f.identity: f.photo for f in faces}, truth, seed)
    clip.write_truth(path.with_suffix(".json"))
    return clip


def make_torture_set(faces_root: str | Path, out_dir: str | Path, names: list[str] | None = None,
                     seed: int = 0, seconds: float | None = None, people: list[str] | None = None) -> list[Clip]:
    """Every scenario (or those ``names``) rendered into ``out_dir``; scenario ``k`` draws
    its people and motion from seed ``(seed, k)``, so one clip does not depend on which
    others are made. ``seconds`` overrides every clip's length (keyframed paths scale
    along), e.g. for quick tests. ``people`` restricts the identities drawn from."""
    faces_root = Path(faces_root)
    if not faces_root.is_dir():
        raise UserError(f"faces folder not found: {faces_root}")
    unknown = sorted(set(names or ()) - set(SCENARIOS_BY_NAME))
    if unknown:
        raise UserError(f"unknown scenario(s) {', '.join(unknown)} (choose from {', '.join(SCENARIOS_BY_NAME)})")
    clips = []
    for k, sc in enumerate(SCENARIOS):
        if names and sc.name not in names:
            continue
        rng = np.random.default_rng([seed, k])
        chosen = pick_people(faces_root, sc.faces, rng, only=people)
        if seconds is not None:
            sc = replace(sc, seconds=seconds)
        clips.append(make_clip(sc, chosen, Path(out_dir), seed=int(rng.integers(1 << 31))))
    return clips

