"""Measuring privacy, utility and speed.

Lives here: metrics (EER, TAR, self-match), baselines (blur, pixelate, noise, JPEG),
evaluation runs and reports, the torture set and its leak metric, the speed bench.
May import: ``core``, ``io``, ``tracking``, ``protect``, ``inference``, ``rppg``,
``recognizers``, ``pipeline``. Never ``training`` (training calls this, not the reverse).
"""
