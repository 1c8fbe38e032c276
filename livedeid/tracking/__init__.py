"""Finding and following faces.

Lives here: the MediaPipe face mesh tracker with One-Euro smoothing, the full-range
safety-net detector, still-photo landmarking and the alignment of a face to the model crop.
May import: ``livedeid.core``. Never torch or Qt.
"""
