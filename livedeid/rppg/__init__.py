"""Heart rate from the skin (remote photoplethysmography).

One small module per step, offline and live sharing every one:
``regions`` (forehead and cheek skin, its mean colour) -> ``methods`` (POS, CHROM,
GREEN: RGB trace to pulse) -> ``spectrum`` (band-pass, spectral peak, SNR grade).
``streaming`` runs them causally on a sliding window for live use, ``monitor`` over a
whole recording (the one heart-rate-only loop), ``differentiable`` is POS in torch for
training losses.
May import: ``livedeid.core`` (and ``livedeid.tracking`` in the monitor loop). torch
only inside the differentiable helpers used by training.
"""
