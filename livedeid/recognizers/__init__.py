"""Real face recognisers used to measure (and attack) privacy.

Lives here: dlib and SFace behind one ``Recognizer`` interface and registry, their
differentiable torch heads, and ONNX -> torch loading.
May import: ``core``, ``tracking``; ``livedeid.nets`` for the dlib port (torch, lazily).
"""
