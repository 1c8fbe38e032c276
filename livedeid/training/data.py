"""Training data: short clips of aligned face crops with a known pulse.

Two kinds of source feed the trainer through one batch format (:class:`ClipBatch`):

* :class:`FaceClipSampler` — still photos of real people (``../shared/data/faces``:
  celebrities and ORL), each turned into as many clips as we like. Every photo is aligned
  once (MediaPipe landmarks -> the tracker's own similarity alignment) into a crop with a
  margin, together with its pulse-skin mask (:func:`livedeid.io.synthetic.skin_pulse_mask`) and
  the rPPG region (:func:`livedeid.rppg.regions.skin_mask`). A clip is then made *in crop space*
  (cheap: one 192->128 warp per frame): a PPG pulse along the haemoglobin signature on
  the skin (:func:`livedeid.io.synthetic.ppg_waveform`), small smooth head motion (shift, roll,
  scale - i.e. tracker jitter and movement), a random global misalignment, brightness
  change with lamp flicker, and sensor noise.
* :class:`VideoClipSampler` — real videos (UBFC-rPPG, PURE, or any folder of face
  videos), tracked once with the live :class:`~livedeid.tracking.mesh.FaceTracker` into aligned
  crop sequences (cached as ``.npz``), with the recorded PPG where the dataset has one.

Identities are split **by person** (:func:`split_identities`): held-out people are never
seen in training, and the model is evaluated on them.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from livedeid.core.errors import UserError
from livedeid.evaluation.photos import list_face_images
from livedeid.io.synthetic import PULSE_SIGNATURE_RGB, ppg_waveform

CROP = 128
MARGIN = 32          # crop margin (px, each side) so that jitter never samples outside
BIG = CROP + 2 * MARGIN
VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm")


# --------------------------------------------------------------------------------------
# the batch every sampler returns
# --------------------------------------------------------------------------------------
@dataclass
class ClipBatch:
    frames: np.ndarray      # (B, L, 3, 128, 128) float32 RGB [0, 1]: the "clean" input video
    roi: np.ndarray         # (B, 1, 128, 128) float32: rPPG skin region (forehead + cheeks)
    identity: np.ndarray    # (B,) int64 index into the sampler's identities; -1 = unknown
    pulse: np.ndarray | None  # (B, L) true blood volume per frame, when known
    hr_bpm: np.ndarray | None  # (B,) true heart rate, when known
    fs: float = 30.0
    oval: np.ndarray | None = None  # (B, 1, 128, 128) feathered face oval: where the live
    #                                 composite applies the residual (None: everywhere)


# --------------------------------------------------------------------------------------
# still photos -> aligned crops with a margin
# --------------------------------------------------------------------------------------
@dataclass
class AlignedFace:
    identity: str           # "<dataset>/<person>", e.g. "celebrities/id03", "orl/s7"
    path: str
    crop: np.ndarray        # (BIG, BIG, 3) uint8 RGB, aligned with the template + MARGIN
    skin: np.ndarray        # (BIG, BIG) float32 pulse-skin mask (soft)
    roi: np.ndarray         # (BIG, BIG) float32 rPPG region (0/1)
    oval: np.ndarray        # (BIG, BIG) float32 feathered face oval (the composite's mask)


def align_photo(image_bgr: np.ndarray, landmarks: np.ndarray | None = None):
    """(crop BIG x BIG uint8 RGB, landmarks in crop coordinates) or None if no face.

    Landmarks, unless given, are :func:`livedeid.tracking.still.still_landmarks`'s (largest
    face; small photos such as ORL's 92x112 searched again enlarged). Big photos are
    shrunk with area averaging before the warp so that it does not alias."""
    from livedeid.tracking.mesh import alignment
    from livedeid.tracking.still import still_landmarks

    img = image_bgr
    if img.ndim == 2:
        img = cv2.cvtColor(img, cv2.COLOR_GRAY2BGR)
    if landmarks is None:
        landmarks = still_landmarks(img)
        if landmarks is None:
            return None
    m = alignment(landmarks, CROP)[0]
    scale = math.sqrt(abs(np.linalg.det(m[:, :2])))
    if scale < 0.8:  # shrink first (area), then warp near scale 1
        img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        m = m.copy()
        m[:, :2] /= scale
    m = m.copy()
    m[:, 2] += MARGIN
    crop = cv2.warpAffine(img, m, (BIG, BIG), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    # landmarks were in the original image's pixels; the (possibly) rescaled m maps
    # rescaled pixels, so map the landmarks through the rescale too.
    lm_img = landmarks * (scale if scale < 0.8 else 1.0)
    lm_crop = lm_img @ m[:, :2].T + m[:, 2]
    return cv2.cvtColor(crop, cv2.COLOR_BGR2RGB), lm_crop


def prepare_faces(root: Path, cache: Path | None = None) -> list[AlignedFace]:
    """Align every labelled photo once (a few seconds per hundred photos), cached as npz."""
    from livedeid.io.synthetic import skin_pulse_mask
    from livedeid.rppg.regions import skin_mask

    items = list_face_images(root)
    if not items:
        raise UserError(f"no labelled face photos under {root} (expected celebrities/idNN or orl/sN)")
    key = json.dumps(["v3"] + [str(s.path) for s in items])  # v3: tracking.still landmarks
    if cache is not None and Path(cache).is_file():
        z = np.load(cache, allow_pickle=False)
        if str(z["key"]) == key:
            return [AlignedFace(str(i), str(p), c, s.astype(np.float32), r.astype(np.float32), o.astype(np.float32))
                    for i, p, c, s, r, o in zip(z["ids"], z["paths"], z["crops"], z["skin"], z["roi"], z["oval"])]
    faces = []
    for photo in items:
        img = cv2.imread(str(photo.path), cv2.IMREAD_COLOR)
        if img is None:
            continue
        res = align_photo(img)
        if res is None:
            continue
        crop_rgb, lm = res
        crop_bgr = np.ascontiguousarray(crop_rgb[:, :, ::-1])
        skin = skin_pulse_mask(crop_bgr, lm).astype(np.float32)
        roi = skin_mask(lm, (BIG, BIG)).astype(np.float32)
        faces.append(AlignedFace(photo.identity, str(photo.path), crop_rgb, skin, roi, oval_in(lm, BIG)))
    if cache is not None:
        Path(cache).parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(cache, key=key, ids=[f.identity for f in faces], paths=[f.path for f in faces],
                            crops=np.stack([f.crop for f in faces]),
                            skin=np.stack([f.skin for f in faces]).astype(np.float16),
                            roi=np.stack([f.roi for f in faces]).astype(np.float16),
                            oval=np.stack([f.oval for f in faces]).astype(np.float16))
    return faces


def oval_in(landmarks: np.ndarray, size: int) -> np.ndarray:
    """The live composite's feathered face-oval mask (:func:`livedeid.protect.composite.oval_mask`)
    as a full ``(size, size)`` float32 image, for landmarks in that image's pixels."""
    from livedeid.protect.composite import oval_mask

    out = np.zeros((size, size), np.float32)
    box, mask = oval_mask(np.asarray(landmarks, np.float64), (size, size))
    if box is not None:
        x0, y0, x1, y1 = box
        out[y0:y1, x0:x1] = mask
    return out


def split_identities(identities, held_out: dict[str, int], seed: int = 0) -> tuple[list[str], list[str]]:
    """(train, held_out) identity lists. ``held_out`` maps dataset -> how many of its people
    are never trained on; the choice is a seeded permutation (recorded in the model card)."""
    ids = sorted(set(identities))
    rng = np.random.default_rng(seed)
    test: list[str] = []
    for dataset, n in held_out.items():
        people = [i for i in ids if i.split("/")[0] == dataset]
        if n >= len(people):
            raise ValueError(f"cannot hold out {n} of {len(people)} identities of {dataset}")
        test += sorted(rng.permutation(people)[:n].tolist())
    return [i for i in ids if i not in test], sorted(test)


# --------------------------------------------------------------------------------------
# clip synthesis in crop space
# --------------------------------------------------------------------------------------
def _walk(rng: np.random.Generator, n: int, smooth: float) -> np.ndarray:
    """Zero-mean unit-std smooth random walk of length n (smooth = sigma in frames)."""
    x = gaussian_filter1d(rng.normal(size=n + 60), sigma=max(smooth, 1e-3))[30:-30]
    x = x - x.mean()
    sd = x.std()
    return x / sd if sd > 1e-9 else x


def _similarity(dx: float, dy: float, roll_deg: float, scale: float) -> np.ndarray:
    """2x3 map big-crop -> 128 crop: rotate/scale about the crop centre, then shift."""
    c = BIG / 2.0
    a = math.radians(roll_deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * scale
    t = np.array([CROP / 2.0 + dx, CROP / 2.0 + dy]) - r @ np.array([c, c])
    return np.hstack([r, t[:, None]])


def centre_crop(image: np.ndarray) -> np.ndarray:
    """The centred ``CROP`` px part of a ``BIG`` px aligned image or mask: what the model
    sees of an aligned photo held still (no jitter, no misalignment)."""
    return np.ascontiguousarray(image[MARGIN:MARGIN + CROP, MARGIN:MARGIN + CROP])


@dataclass
class ClipSettings:
    fs: float = 30.0
    hr_bpm: tuple[float, float] = (45.0, 150.0)
    pulse_amplitude: tuple[float, float] = (0.003, 0.012)  # relative green peak-to-peak
    misalign_px: float = 2.0      # per-clip constant offset (tracker bias)
    misalign_deg: float = 4.0
    misalign_scale: float = 0.05
    motion_px: float = 1.5        # within-clip smooth motion (std)
    motion_deg: float = 1.5
    motion_scale: float = 0.015
    brightness: float = 0.12      # per-clip gain range +-
    flicker: float = 0.01         # within-clip relative light change (std)
    noise_std: tuple[float, float] = (0.0, 3.0)  # 8-bit levels
    flip: bool = True


class FaceClipSampler:
    """Random clips of aligned crops from still photos (see the module docstring)."""

    def __init__(self, faces: list[AlignedFace], identities: list[str], settings: ClipSettings | None = None):
        self.identities = list(identities)
        index = {name: k for k, name in enumerate(self.identities)}
        self.faces = [f for f in faces if f.identity in index]
        if not self.faces:
            raise ValueError("no photos for the requested identities")
        self.label = np.array([index[f.identity] for f in self.faces], dtype=np.int64)
        self.by_id = [np.nonzero(self.label == k)[0] for k in range(len(self.identities))]
        self.settings = settings or ClipSettings()
        sig = PULSE_SIGNATURE_RGB.astype(np.float32)
        # Per photo: crop (float RGB) and the colour change per unit blood volume.
        self._crop = [f.crop.astype(np.float32) / 255.0 for f in self.faces]
        self._pulse = [c * f.skin[..., None] * sig for c, f in zip(self._crop, self.faces)]

    def aligned_crops(self) -> tuple[np.ndarray, np.ndarray]:
        """Every photo's centred 128 crop (N, 3, 128, 128) float32 and its identity index:
        the clean gallery (prototypes) and the evaluation probes."""
        crops = np.stack([centre_crop(c) for c in self._crop])
        return crops.transpose(0, 3, 1, 2).copy(), self.label.copy()

    def sample(self, n: int, length: int, rng: np.random.Generator, photo: np.ndarray | None = None) -> ClipBatch:
        s = self.settings
        if photo is None:  # identities uniformly (ORL has 10 photos each, celebrities 2-8)
            ids = rng.integers(0, len(self.identities), n)
            photo = np.array([rng.choice(self.by_id[k]) for k in ids])
        frames = np.empty((n, length, 3, CROP, CROP), np.float32)
        roi = np.empty((n, 1, CROP, CROP), np.float32)
        oval = np.empty((n, 1, CROP, CROP), np.float32)
        pulse = np.empty((n, length), np.float32)
        hr = rng.uniform(*s.hr_bpm, n)
        t = np.arange(length) / s.fs
        for b in range(n):
            k = int(photo[b])
            crop, dpulse = self._crop[k], self._pulse[k]
            skin_roi, face_oval = self.faces[k].roi, self.faces[k].oval
            if s.flip and rng.random() < 0.5:
                crop, dpulse = crop[:, ::-1], dpulse[:, ::-1]
                skin_roi, face_oval = skin_roi[:, ::-1], face_oval[:, ::-1]
            phase = rng.uniform() + hr[b] / 60.0 * t
            pulse[b] = ppg_waveform(phase)
            amp = rng.uniform(*s.pulse_amplitude)
            off = (rng.uniform(-1, 1, 2) * s.misalign_px, rng.uniform(-1, 1) * s.misalign_deg,
                   1 + rng.uniform(-1, 1) * s.misalign_scale)
            smooth = rng.uniform(4, 20)
            mx, my = (_walk(rng, length, smooth) * s.motion_px for _ in range(2))
            mr = _walk(rng, length, smooth) * s.motion_deg
            ms = _walk(rng, length, smooth) * s.motion_scale
            gain = 1 + rng.uniform(-1, 1) * s.brightness
            light = gain * (1 + s.flicker * _walk(rng, length, rng.uniform(1, 15)))
            noise = rng.uniform(*s.noise_std) / 255.0
            for i in range(length):
                m = _similarity(off[0][0] + mx[i], off[0][1] + my[i], off[1] + mr[i], off[2] * (1 + ms[i]))
                c = amp * (pulse[b, i] - 0.5)
                img = cv2.warpAffine(np.ascontiguousarray(crop - c * dpulse), m, (CROP, CROP),
                                     flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
                img *= light[i]
                if noise > 0:
                    img += rng.normal(0, noise, img.shape).astype(np.float32)
                frames[b, i] = np.clip(img, 0, 1).transpose(2, 0, 1)
                if i == length // 2:
                    roi[b, 0] = cv2.warpAffine(np.ascontiguousarray(skin_roi), m, (CROP, CROP), flags=cv2.INTER_LINEAR)
                if i == length - 1:  # the protected outputs are the last frames of the clip
                    oval[b, 0] = cv2.warpAffine(np.ascontiguousarray(face_oval), m, (CROP, CROP), flags=cv2.INTER_LINEAR)
        return ClipBatch(frames, roi, self.label[photo], pulse, hr, s.fs, oval)


# --------------------------------------------------------------------------------------
# real videos: UBFC-rPPG, PURE, any folder of face videos
# --------------------------------------------------------------------------------------
@dataclass
class VideoItem:
    name: str                      # identity / subject
    frames: object                 # callable -> iterator of (timestamp_s, image_bgr)
    ppg_t: np.ndarray | None = None  # reference PPG timestamps (s) and values
    ppg: np.ndarray | None = None
    source: str = ""               # path, for the tracking cache's file name


def _video_frames(path: Path):
    def gen():
        import av

        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            rate = float(stream.average_rate or 30)
            for i, fr in enumerate(container.decode(stream)):
                t = float(fr.pts * stream.time_base) if fr.pts is not None else i / rate
                yield t, fr.to_ndarray(format="bgr24")
    return gen


def ubfc_items(root: Path) -> list[VideoItem]:
    """UBFC-rPPG: ``subject*/vid.avi`` with ``ground_truth.txt`` (DATASET_2: rows PPG,
    HR, time in s) or ``gtdump.xmp`` (DATASET_1: CSV ms, HR, SpO2?, PPG - column 3)."""
    items = []
    for sub in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        vid = sub / "vid.avi"
        if not vid.is_file():
            continue
        ppg_t = ppg = None
        if (sub / "ground_truth.txt").is_file():
            rows = [np.array(line.split(), dtype=np.float64) for line in (sub / "ground_truth.txt").read_text().splitlines() if line.strip()]
            ppg, ppg_t = rows[0], rows[2]
        elif (sub / "gtdump.xmp").is_file():
            gt = np.loadtxt(sub / "gtdump.xmp", delimiter=",")
            ppg_t, ppg = gt[:, 0] / 1000.0, gt[:, 3]
        items.append(VideoItem(sub.name, _video_frames(vid), ppg_t, ppg, str(vid)))
    return items


def pure_items(root: Path) -> list[VideoItem]:
    """PURE: ``NN-MM/`` folders of ``Image<ns>.png`` and ``NN-MM.json`` with
    ``/FullPackage`` (Timestamp ns, Value.waveform) and ``/Image`` (Timestamp ns)."""
    items = []
    for sub in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        js = Path(root) / f"{sub.name}.json"
        if not js.is_file():
            js = sub / f"{sub.name}.json"
        pngs = sorted(sub.glob("Image*.png"))
        if not pngs:
            continue
        ppg_t = ppg = None
        if js.is_file():
            meta = json.loads(js.read_text())
            pk = meta.get("/FullPackage", [])
            ppg_t = np.array([p["Timestamp"] for p in pk], np.float64) / 1e9
            ppg = np.array([p["Value"]["waveform"] for p in pk], np.float64)

        def gen(pngs=pngs):
            for p in pngs:
                ns = int("".join(ch for ch in p.stem if ch.isdigit()))
                yield ns / 1e9, cv2.imread(str(p), cv2.IMREAD_COLOR)
        items.append(VideoItem(sub.name.split("-")[0], gen, ppg_t, ppg, str(sub)))
    return items


def video_folder_items(root: Path) -> list[VideoItem]:
    """Every video file under ``root``; identity = the file's parent folder name if the
    videos are sorted into per-person folders, else the file stem. No pulse reference."""
    root = Path(root)
    vids = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTS)
    return [VideoItem(v.parent.name if v.parent != root else v.stem, _video_frames(v), source=str(v)) for v in vids]


def track_video(item: VideoItem, max_frames: int | None = None):
    """Aligned crops ``(L, 3, 128, 128)`` uint8 RGB, rPPG masks ``(L, 128, 128)`` bool,
    timestamps ``(L,)`` of the largest tracked face of a video (frames without a trusted
    face are dropped; a long gap splits nothing here - clips are re-cut by the sampler)."""
    from livedeid.protect.windows import extract_crop
    from livedeid.rppg.regions import skin_mask
    from livedeid.tracking.mesh import FaceTracker

    crops, masks, ovals, ts = [], [], [], []
    with FaceTracker(max_faces=1, crop_size=CROP) as tracker:
        for i, (t, img) in enumerate(item.frames()):
            if max_frames is not None and i >= max_frames:
                break
            faces = [f for f in tracker.update(img, t) if not f.is_lost and f.confidence >= 0.5]
            if not faces:
                continue
            f = faces[0]
            crop = extract_crop(img, f.to_crop, CROP)
            lm = f.landmarks @ f.to_crop[:, :2].T + f.to_crop[:, 2]
            crops.append(np.round(crop * 255.0).astype(np.uint8))  # the model's (3, S, S) RGB layout
            masks.append(skin_mask(lm, (CROP, CROP)))
            ovals.append(np.round(oval_in(lm, CROP) * 255).astype(np.uint8))
            ts.append(t)
    if not crops:
        return (np.zeros((0, 3, CROP, CROP), np.uint8), np.zeros((0, CROP, CROP), bool),
                np.zeros((0, CROP, CROP), np.uint8), np.zeros(0))
    return np.stack(crops), np.stack(masks), np.stack(ovals), np.array(ts)


class VideoClipSampler:
    """Random clips from tracked real videos (cached per video in ``cache_dir``)."""

    def __init__(self, items: list[VideoItem], cache_dir: Path | None = None, max_frames: int | None = None):
        self.tracks = []
        names = sorted({it.name for it in items})
        self.identities = names
        for it in items:
            key = hashlib.sha1(f"{it.source}|{max_frames}".encode()).hexdigest()[:12]
            cache = Path(cache_dir) / f"{it.name}_{key}.npz" if cache_dir else None
            if cache is not None and cache.is_file():
                z = np.load(cache)
                crops, masks, ovals, ts = z["crops"], z["masks"], z["ovals"], z["ts"]
            else:
                crops, masks, ovals, ts = track_video(it, max_frames)
                if cache is not None:
                    cache.parent.mkdir(parents=True, exist_ok=True)
                    np.savez_compressed(cache, crops=crops, masks=masks, ovals=ovals, ts=ts)
            if len(crops) < 2:
                continue
            pulse = np.interp(ts, it.ppg_t, it.ppg) if it.ppg is not None and len(it.ppg) else None
            self.tracks.append((names.index(it.name), crops, masks, ts, pulse, ovals))
        if not self.tracks:
            raise UserError("no face could be tracked in any of the videos")

    def sample(self, n: int, length: int, rng: np.random.Generator) -> ClipBatch:
        usable = [tr for tr in self.tracks if len(tr[1]) >= length]
        if not usable:
            raise ValueError(f"no tracked video has {length} frames")
        frames = np.empty((n, length, 3, CROP, CROP), np.float32)
        roi = np.empty((n, 1, CROP, CROP), np.float32)
        oval = np.empty((n, 1, CROP, CROP), np.float32)
        ident = np.empty(n, np.int64)
        pulses, fs = [], []
        for b in range(n):
            k, crops, masks, ts, pulse, ovals = usable[rng.integers(len(usable))]
            s = int(rng.integers(0, len(crops) - length + 1))
            frames[b] = crops[s:s + length].astype(np.float32) / 255.0
            roi[b, 0] = masks[s + length // 2]
            oval[b, 0] = ovals[s + length - 1].astype(np.float32) / 255.0
            ident[b] = k
            pulses.append(None if pulse is None else pulse[s:s + length])
            fs.append(1.0 / np.median(np.diff(ts[s:s + length])) if length > 1 else 30.0)
        have = all(p is not None for p in pulses)
        return ClipBatch(frames, roi, ident, np.stack(pulses).astype(np.float32) if have else None, None,
                         float(np.median(fs)), oval)
