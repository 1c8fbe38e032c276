"""Running the de-identification model.

Lives here: the engines behind one registry (ONNX Runtime, torch, TensorRT) and the
model manifest (artefacts, hashes, measured protection).
May import: ``livedeid.core``; the torch engine imports ``livedeid.nets`` lazily, and
torch/TensorRT are only imported when those engines are built.
"""
