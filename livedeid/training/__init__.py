"""Training the de-identification model (torch).

Lives here: data (aligned faces, synthetic pulse clips), losses and the training loop;
held-out evaluation calls ``livedeid.evaluation``.
May import: anything below the CLI except ``panel``.
"""
