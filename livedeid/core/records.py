"""Typed records passed between pipeline stages.

A :class:`Frame` is created by capture and travels one way through
track -> window -> engine -> composite -> sinks; each stage fills in what it owns.
Images are ``uint8`` BGR ``(H, W, 3)`` arrays, OpenCV's native order.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(eq=False)  # identity semantics: records hold arrays
class FaceTrack:
    """One tracked face in one frame.

    ``landmarks`` are MediaPipe face-mesh points in pixel coordinates of the full
    frame, shape ``(478, 2)`` float32 (temporally smoothed).
    ``to_crop`` is the 2x3 similarity transform mapping frame pixels to the
    aligned model crop; ``from_crop`` is its exact inverse.
    ``confidence`` in [0, 1] is the tracker's belief that the landmarks fit a face;
    ``lost_frames`` counts consecutive frames without a fresh detection (0 = seen now),
    ``lost_s`` the seconds since the last one; ``velocity`` is the face's motion at its
    last sighting in px/s (where a lost face may have gone).
    """

    track_id: int
    landmarks: np.ndarray
    to_crop: np.ndarray
    from_crop: np.ndarray
    confidence: float
    lost_frames: int = 0
    crop: np.ndarray | None = None        # aligned crop, float32 (3, S, S) RGB in [0, 1]
    protected: np.ndarray | None = None   # engine output, same layout as ``crop``
    mask_grow: float = 0.0                # the composite's region beyond the face oval (0: the oval; the cloak's)
    velocity: tuple[float, float] = (0.0, 0.0)  # px/s at the last sighting
    lost_s: float = 0.0                   # seconds since the last sighting (0 = seen now)

    @property
    def is_lost(self) -> bool:
        return self.lost_frames > 0

    def bbox(self) -> tuple[int, int, int, int]:
        """Integer (x0, y0, x1, y1) box around the landmarks."""
        x0, y0 = np.floor(self.landmarks.min(axis=0)).astype(int)
        x1, y1 = np.ceil(self.landmarks.max(axis=0)).astype(int)
        return int(x0), int(y0), int(x1), int(y1)


@dataclass(eq=False)
class Frame:
    """A video frame and everything the stages learned about it."""

    image: np.ndarray                 # uint8 BGR (H, W, 3), as captured
    index: int                        # 0-based frame number in the source
    timestamp: float                  # seconds; monotonic clock for live sources, pts for files
    faces: list[FaceTrack] = field(default_factory=list)
    output: np.ndarray | None = None  # composited frame that sinks receive
    protected: bool = True            # False only when the user switched protection off
    fail_closed_regions: int = 0      # faces hidden by the fail-closed policy in this frame
    hidden_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)  # regions hidden
    # Faces a second detector saw that no track holds (hidden too), and whether no face
    # at all has been found yet since the tracker started (the whole frame is hidden then).
    unheld_boxes: list[tuple[int, int, int, int]] = field(default_factory=list)
    no_face_yet: bool = False
    cloak_track: int | None = None    # track id of the face that wore the profile's cloak in this frame
    stage_ms: dict[str, float] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.image.shape[0])

    @property
    def width(self) -> int:
        return int(self.image.shape[1])
