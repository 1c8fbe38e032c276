"""Heart rate from the skin (remote photoplethysmography).

Lives here: skin regions, the POS/CHROM/GREEN methods, spectrum and quality, the
streaming estimator and the one heart-rate-only monitor loop.
May import: ``livedeid.core`` (and ``livedeid.tracking`` in the monitor loop). torch
only inside the differentiable helpers used by training.
"""
