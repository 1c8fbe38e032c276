"""Records, errors, settings and geometry shared by every stage.

Lives here: the small picklable records that travel between stages (``Frame``,
``FaceTrack``), ``UserError``, the one ``PipelineConfig`` settings object, face-region
landmark indices and the geometry (five points, crop template, similarity fit, and the
thin-plate re-posing of a face-registered pattern).
May import: numpy, OpenCV and the standard library only -- nothing else of livedeid.
"""
