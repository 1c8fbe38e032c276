"""Enrolment material: one person's faces from a folder of photos or a video file, chosen
for variety and split into an optimisation set and a held-out verification set.

Each item keeps the clean BGR image (verification runs the real recognisers on whole
images), the face-mesh landmarks, the aligned crop exactly as the pipeline makes it
(:func:`livedeid.protect.windows.extract_crop` with :func:`livedeid.tracking.mesh.alignment`),
a head pose and the mouth opening.

Pose from the five alignment points (:func:`pose_estimate`) is a weak-perspective
approximation good enough to sort frames into bins, not a measurement: roll is the
angle of the eye line; yaw and pitch come from how far the nose tip, which stands about
:data:`NOSE_DEPTH` inter-ocular distances in front of the eyes, is displaced from where a
frontal face has it (on the eyes' midline sideways; :data:`FRONTAL_NOSE_SHARE` of the way
from the eye line to the mouth line vertically). Real faces differ in nose depth and
length, so angles are good to maybe ±10°; beyond ~45° the five points are unreliable anyway.

Selection: items are binned by yaw, pitch and mouth (open / closed); a video or a camera
recording contributes up to :data:`MAX_VIDEO_ITEMS` frames shared round-robin over the
bins it covers, spread in time inside each bin (neighbouring frames are near copies), in
one pass with bounded memory (:class:`_BinReservoir`). A camera recording is guided
(:data:`GUIDE`: straight, left, right, up, down, speaking). Held out: in bin order
(so that they span the poses), every :data:`HELD_OUT_EVERY`-th chosen frame of a video and
every second photo, at least one either way. Frames held out of a video come
from the same session as the optimisation frames, so they verify less than photos taken
another day would.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from livedeid.core.errors import UserError
from livedeid.core.geometry import five_points
from livedeid.evaluation.photos import IMAGE_SUFFIXES, read_image
from livedeid.protect.windows import extract_crop
from livedeid.tracking.mesh import aligned_landmarks, alignment

CROP_SIZE = 128
NOSE_DEPTH = 0.55           # nose tip in front of the eye line, in inter-ocular distances
# Where MediaPipe's nose tip sits between the eye line and the mouth line on a frontal
# face: the median over the 61 celebrity portraits in ../shared/data (10-90 %: 0.53-0.74).
FRONTAL_NOSE_SHARE = 0.64
YAW_EDGES = (-25.0, -10.0, 10.0, 25.0)   # degrees: far left, left, front, right, far right
PITCH_EDGES = (-10.0, 10.0)              # degrees: down, level, up
MOUTH_OPEN = 0.12           # inner-lip gap over inter-ocular distance: talking, not resting
MAX_VIDEO_ITEMS = 24
HELD_OUT_EVERY = 3
MIN_CONFIDENCE = 0.5        # the pipeline's default trust level for a tracked face
_UPPER_LIP, _LOWER_LIP = 13, 14          # MediaPipe inner-lip midpoints


@dataclass(eq=False)
class EnrolmentItem:
    source: str                 # photo file name, or "frame N"
    image: np.ndarray           # clean BGR uint8, the whole photo or frame
    landmarks: np.ndarray       # (478, 2) face-mesh points in image pixels
    crop: np.ndarray            # float32 (3, 128, 128) RGB in [0, 1], the pipeline's aligned crop
    yaw: float                  # degrees, positive: nose towards image right
    pitch: float                # degrees, positive: looking up
    roll: float                 # degrees, positive: eye line turning clockwise in the image
    mouth: float                # inner-lip gap / inter-ocular distance

    @property
    def bin(self) -> tuple[int, int, int]:
        return pose_bin(self.yaw, self.pitch, self.mouth)


@dataclass
class Enrolment:
    optimise: list[EnrolmentItem]
    held_out: list[EnrolmentItem]
    kind: str                   # "photos" or "video"
    examined: int               # photos read, or video frames tracked
    without_face: int           # of those, how many had no usable face

    def crops(self, held_out: bool = False) -> np.ndarray:
        items = self.held_out if held_out else self.optimise
        return np.stack([i.crop for i in items]).astype(np.float32)

    def crop_landmarks(self, held_out: bool = False) -> list[np.ndarray]:
        """Each item's landmarks in its crop's pixels (the mesh found on the whole image,
        as the frame path finds it)."""
        items = self.held_out if held_out else self.optimise
        return [aligned_landmarks(i.landmarks, CROP_SIZE) for i in items]

    def coverage(self) -> str:
        """A one-line summary of the pose and expression range (for the user)."""
        items = self.optimise + self.held_out
        yaws = [i.yaw for i in items]
        pitches = [i.pitch for i in items]
        talking = sum(i.mouth > MOUTH_OPEN for i in items)
        return (f"{len(items)} faces from {self.examined} {self.kind} ({len({i.bin for i in items})} pose/expression "
                f"bins; yaw {min(yaws):+.0f}..{max(yaws):+.0f} deg, pitch {min(pitches):+.0f}..{max(pitches):+.0f} "
                f"deg, mouth open in {talking}): {len(self.optimise)} to optimise on, {len(self.held_out)} held out")


def pose_estimate(landmarks: np.ndarray) -> tuple[float, float, float]:
    """(yaw, pitch, roll) in degrees from the five alignment points; see the module
    docstring for the approximation."""
    le, re_, nose, ml, mr = five_points(landmarks)
    eyes, mouth = (le + re_) / 2.0, (ml + mr) / 2.0
    d = re_ - le
    iod = float(np.hypot(*d)) + 1e-9
    roll = math.atan2(d[1], d[0])
    c, s = math.cos(-roll), math.sin(-roll)
    upright = np.array([[c, -s], [s, c]])
    nose_u, mouth_u = upright @ (nose - eyes), upright @ (mouth - eyes)
    depth = NOSE_DEPTH * iod
    yaw = math.degrees(math.atan2(nose_u[0], depth))
    pitch = math.degrees(math.atan2((FRONTAL_NOSE_SHARE * mouth_u[1] - nose_u[1]), depth))
    return yaw, pitch, math.degrees(roll)


def face_measures(landmarks: np.ndarray) -> tuple[float, float, float, float]:
    """(yaw, pitch, roll, mouth opening) of one face's landmarks."""
    lm = np.asarray(landmarks, dtype=np.float64)
    yaw, pitch, roll = pose_estimate(lm)
    pts = five_points(lm)
    mouth = float(np.linalg.norm(lm[_UPPER_LIP] - lm[_LOWER_LIP]) / (np.linalg.norm(pts[1] - pts[0]) + 1e-9))
    return yaw, pitch, roll, mouth


def pose_bin(yaw: float, pitch: float, mouth: float) -> tuple[int, int, int]:
    return int(np.searchsorted(YAW_EDGES, yaw)), int(np.searchsorted(PITCH_EDGES, pitch)), int(mouth > MOUTH_OPEN)


def make_item(source: str, image: np.ndarray, landmarks: np.ndarray) -> EnrolmentItem:
    """An item from a clean image and its face's landmarks: the crop the pipeline would make."""
    lm = np.asarray(landmarks, dtype=np.float64)
    to_crop, _, _ = alignment(lm, CROP_SIZE)
    yaw, pitch, roll, mouth = face_measures(lm)
    return EnrolmentItem(source=source, image=image, landmarks=lm.astype(np.float32),
                         crop=extract_crop(image, to_crop, CROP_SIZE), yaw=yaw, pitch=pitch, roll=roll, mouth=mouth)


# The guided camera enrolment: what to do during each part of the recording (seconds from
# the start, instruction). Six parts of about equal length over the default 25 s.
GUIDE = ((0.0, "look straight at the camera"), (4.0, "turn your head slowly to the left"),
         (8.0, "turn your head slowly to the right"), (12.0, "tilt your head up"), (16.0, "tilt your head down"),
         (20.0, "look at the camera and speak (count to ten)"))
CAMERA_SECONDS = 25.0


def guide_at(elapsed_s: float, seconds: float = CAMERA_SECONDS) -> str:
    """The instruction for ``elapsed_s`` into a guided recording of ``seconds`` (the guide's
    parts stretched to fit)."""
    t = elapsed_s * CAMERA_SECONDS / max(seconds, 1e-6)
    return [text for start, text in GUIDE if t >= start][-1]


@dataclass
class Progress:
    """One update of a recording enrolment, for a progress bar or the panel."""

    elapsed_s: float            # seconds of the recording taken in
    seconds: float              # seconds it will take in
    faces: int                  # frames with a usable face so far
    bins: int                   # pose/expression bins covered so far
    instruction: str            # what the person should do now ("" for a file)
    image: np.ndarray | None = None    # the frame (for a preview), BGR
    landmarks: np.ndarray | None = None


def gather(source: str | Path, *, max_seconds: float | None = None, progress=None) -> Enrolment:
    """Enrolment material from ``source``: a folder of photos, a video file, a camera index
    or stream URL (guided, :data:`CAMERA_SECONDS` by default), or ``synthetic[:HR]`` (the
    built-in clip). ``progress`` gets a :class:`Progress` now and then while a stream is read."""
    text = str(source)
    path = Path(text).expanduser()
    if path.is_dir():
        enrolment = from_photos(path)
    else:
        from livedeid.io.sources import open_source

        if not (text.isdigit() or "://" in text or text.startswith("synthetic")) and not path.exists():
            raise UserError(f"enrolment source not found: {path}")
        with open_source(text) as src:
            seconds = max_seconds if max_seconds is not None else (CAMERA_SECONDS if src.is_live else 60.0)
            enrolment = from_stream(src, seconds=seconds, progress=progress)
    if not enrolment.optimise or not enrolment.held_out:
        raise UserError(f"enrolment needs at least 2 usable faces in {text} (one to optimise on, one held out to "
                        f"verify); found {len(enrolment.optimise) + len(enrolment.held_out)}")
    return enrolment


def _natural(name: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def from_photos(folder: Path) -> Enrolment:
    """Every photo in ``folder`` with a face (the largest one), half held out."""
    from livedeid.tracking.still import still_landmarks

    files = sorted((f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES),
                   key=lambda f: _natural(f.name))
    if not files:
        raise UserError(f"no photos in {folder} ({', '.join(sorted(IMAGE_SUFFIXES))})")
    items = []
    for f in files:
        image = read_image(f)
        landmarks = still_landmarks(image)
        if landmarks is not None:
            items.append(make_item(f.name, image, landmarks))
    # In bin order, so both halves span the poses; every second photo is held out.
    items.sort(key=lambda i: (i.bin, _natural(i.source)))
    return Enrolment(optimise=items[0::2], held_out=items[1::2], kind="photos", examined=len(files),
                     without_face=len(files) - len(items))


def _choose(bins: dict[tuple, list[int]], total: int) -> dict[tuple, list[int]]:
    """Per bin, positions (into its time-ordered list) of the items to keep: ``total``
    shared round-robin over the bins, spread evenly in time inside each."""
    quota = dict.fromkeys(bins, 0)
    while sum(quota.values()) < total and any(quota[b] < len(bins[b]) for b in bins):
        for b in sorted(bins):
            if quota[b] < len(bins[b]) and sum(quota.values()) < total:
                quota[b] += 1
    return {b: sorted({round(x) for x in np.linspace(0, len(bins[b]) - 1, q)}) for b, q in quota.items() if q}


class _BinReservoir:
    """Frames of one pose/expression bin, spread over time in bounded memory: every
    ``stride``-th frame of the bin is kept; when more than ``cap`` are held, every second one
    is dropped and the stride doubles (so a long recording costs no more than a short one)."""

    def __init__(self, cap: int):
        self.cap, self.stride, self.seen, self.items = cap, 1, 0, []

    def offer(self, index: int, image: np.ndarray, landmarks: np.ndarray) -> None:
        if self.seen % self.stride == 0:
            self.items.append((index, image, landmarks))
            if len(self.items) > self.cap:
                self.items, self.stride = self.items[::2], self.stride * 2
        self.seen += 1


def from_stream(src, *, seconds: float, max_items: int = MAX_VIDEO_ITEMS, progress=None) -> Enrolment:
    """Up to ``max_items`` frames of the first ``seconds`` of ``src`` (any
    :class:`livedeid.io.sources.Source`: a file, a camera, the synthetic clip), chosen for
    pose/expression variety in one pass; in bin order every :data:`HELD_OUT_EVERY`-th is
    held out (at least one). A live source is guided (:func:`guide_at`)."""
    from livedeid.tracking.mesh import FaceTracker, largest_face

    bins: dict[tuple, _BinReservoir] = {}
    examined = with_face = 0
    t0 = None
    limit = max(1, round(seconds * (src.fps or 30.0)))
    with FaceTracker(max_faces=4, crop_size=CROP_SIZE) as tracker:
        for frame in src:
            t0 = frame.timestamp if t0 is None else t0
            elapsed = frame.timestamp - t0 if src.is_live else frame.index / (src.fps or 30.0)
            if elapsed >= seconds or (not src.is_live and examined >= limit):
                break
            examined += 1
            faces = [f for f in tracker.update(frame.image, frame.timestamp)
                     if not f.is_lost and f.confidence >= MIN_CONFIDENCE]
            lm = None
            if faces:
                with_face += 1
                lm = largest_face(faces).landmarks.copy()
                offer(bins, frame.index, frame.image, lm, max_items)
            if progress is not None:
                progress(Progress(elapsed_s=elapsed, seconds=seconds, faces=with_face, bins=len(bins),
                                  instruction=guide_at(elapsed, seconds) if src.is_live else "",
                                  image=frame.image, landmarks=lm))
    kind = "camera frames" if src.is_live else "video frames"
    return select(bins, max_items, kind=kind, examined=examined, without_face=examined - with_face)


def offer(bins: dict[tuple, _BinReservoir], index: int, image: np.ndarray, landmarks: np.ndarray,
          max_items: int = MAX_VIDEO_ITEMS) -> None:
    """Put one frame's face into its pose/expression bin's reservoir."""
    yaw, pitch, _, mouth = face_measures(landmarks)
    bins.setdefault(pose_bin(yaw, pitch, mouth), _BinReservoir(2 * max_items)).offer(index, image, landmarks)


def select(bins: dict[tuple, _BinReservoir], max_items: int, *, kind: str, examined: int,
           without_face: int) -> Enrolment:
    """Up to ``max_items`` of the frames held in ``bins``, shared round-robin over the bins
    and spread in time inside each; in bin order every :data:`HELD_OUT_EVERY`-th is held out
    (at least one when there are two)."""
    kept = {b: r.items for b, r in bins.items()}
    chosen = _choose({b: list(range(len(v))) for b, v in kept.items()}, max_items)
    in_bin_order = [kept[b][p] for b in sorted(chosen) for p in chosen[b]]
    held = {entry[0] for entry in in_bin_order[HELD_OUT_EVERY - 1::HELD_OUT_EVERY]}
    if len(in_bin_order) >= 2 and not held:  # too few frames for every third: hold out the latest one
        held = {max(entry[0] for entry in in_bin_order)}
    items = [(make_item(f"frame {i}", img, lm), i in held) for i, img, lm in sorted(in_bin_order, key=lambda e: e[0])]
    return Enrolment(optimise=[it for it, h in items if not h], held_out=[it for it, h in items if h],
                     kind=kind, examined=examined, without_face=without_face)


def from_video(path: Path, *, max_seconds: float = 60.0, max_items: int = MAX_VIDEO_ITEMS) -> Enrolment:
    """:func:`from_stream` over the first ``max_seconds`` of a video file."""
    from livedeid.io.sources import FileSource

    with FileSource(path) as src:
        return from_stream(src, seconds=max_seconds, max_items=max_items)
