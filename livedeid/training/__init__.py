"""Training the de-identification model (torch).

Lives here: settings (config), data (aligned faces, synthetic pulse clips), losses, the
training loop, the held-out evaluation and the export rule (heldout, which measures
through ``livedeid.evaluation``'s harness), and the export of trained weights into
`engines/` with their manifest.
May import: anything below the CLI except ``panel``.
"""
