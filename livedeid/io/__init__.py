"""Where frames come from and where they go.

Lives here: sources (video files, cameras, the synthetic pulse clip, live simulation),
sinks (virtual camera, files, null), folders of PNG frames in and out (``frames``: datasets
such as PURE), camera probing and atomic file writes, and the
personal cloak's profile files (``profile``: numpy only, loaded by the patient's pipeline).
May import: ``livedeid.core``; ``synthetic`` also ``livedeid.tracking`` (it landmarks its
still photo) and ``livedeid.rppg`` region constants. Never the pipeline, Qt or torch.
"""
