"""When a lost face's hidden region may be shown again: the release rule.

A face the mesh stops tracking becomes a *lost* track and its region is hidden (fail
closed). It must not stay hidden for ever: after a cut, a camera switch or a person who
left, nobody is there any more, and a blur that never goes away is a broken call (and it
grows over whoever sits there next). The region is released once the detectors have
established that no unprotected face is under it:

* every frame, each detector that runs (the face mesh's own detector and, when on, the
  full-range safety net) looks at the whole frame;
* a frame counts as *clear* for a lost region when no detected face has its centre inside
  the region, except faces a live (tracked, hence protected) track holds (their boxes
  agree: :func:`livedeid.tracking.safety_net.held`);
* the region is released after ``clear_frames`` clear frames in a row (4 with the safety
  net, about 130 ms at 30 fps; 15 with the mesh alone, whose short-range detector misses
  more); one frame with a face there starts the count again;
* and only when the loss is explained: another face is tracked where the region lies (a
  cut, a camera switch, a new person in the seat) or the face was last seen at the
  picture's edge (it left). A face lost where it sat - turned to a profile no detector
  finds - keeps its region hidden, as before this rule.

A face still under the region but seen by no detector (turned away, under a hand) is then
shown as it is - the same as a face no detector sees anywhere else in the picture - and
the moment a detector finds it again it is tracked and protected, or hidden by the safety
net, in that same frame. So releasing never shows a face that the rest of the pipeline
would not show anyway.
"""
from __future__ import annotations

from livedeid.core.geometry import box_centre, overlap_area
from livedeid.tracking.safety_net import held

Box = tuple[float, float, float, float]

CLEAR_FRAMES_WITH_SAFETY_NET = 4
CLEAR_FRAMES_MESH_ONLY = 15


def centre_in(box: Box, region: Box) -> bool:
    cx, cy = box_centre(box)
    return region[0] <= cx <= region[2] and region[1] <= cy <= region[3]


class LostFaceRelease:
    """Counts, per lost track, the clear frames in a row (see the module docstring) and
    says which tracks to release. Tracks not passed in a frame are forgotten."""

    def __init__(self, clear_frames: int = CLEAR_FRAMES_WITH_SAFETY_NET):
        if clear_frames < 1:
            raise ValueError("clear_frames must be at least 1")
        self.clear_frames = clear_frames
        self._clear: dict[int, int] = {}

    def update(self, lost: dict[int, Box], detections: list[Box], live: list[Box],
               left: set[int] | None = None) -> list[int]:
        """The lost track ids to release now. ``lost``: track id -> the region hidden for
        it in this frame; ``detections``: every face a detector found in this frame;
        ``live``: the boxes of the faces tracked (and so protected) in this frame;
        ``left``: the lost tracks last seen at the picture's edge (they may have left)."""
        unheld = [d for d in detections if not held(d, live)]
        counts = {}
        for track_id, region in lost.items():
            occupied = any(centre_in(d, region) for d in unheld)
            counts[track_id] = 0 if occupied else self._clear.get(track_id, 0) + 1
        self._clear = counts

        def explained(track_id: int) -> bool:
            # Someone else is tracked where the region lies (a cut, a new person in the
            # seat), or the face was last seen leaving the picture. A face that turned away
            # where it was explains nothing: its region stays hidden.
            return track_id in (left or set()) or any(overlap_area(lost[track_id], b) > 0 for b in live)

        return [k for k, n in counts.items() if n >= self.clear_frames and explained(k)]
