"""Measuring privacy, utility and speed.

Lives here: labelled photo folders (photos), metrics (EER, TAR, self-match, face
PSNR/SSIM), baselines (blur, pixelate, noise, JPEG, the product as a method), the one
harness that measures a method on photos (harness: used by ``livedeid eval`` and by
training's held-out evaluation), evaluation runs (runs), heart rate on pulse clips
(pulse), reports, the torture set and its leak metric, the speed bench.
codec: the in-memory H.264 round trip of a video call (does a cloak survive it?).
May import: ``core``, ``io``, ``tracking``, ``protect``, ``inference``, ``rppg``,
``recognizers``, ``pipeline``. Never ``training`` (training calls this, not the reverse).
"""
