"""The personal cloak: protection optimised for one enrolled person and verified on
images of them it never saw, before it is trusted.

Lives here: gathering enrolment material from photos, a video or a camera (``enrolment``:
aligned crops, pose and expression bins, the optimisation / held-out split, the guided
recording), the optimisation of a fixed pattern in aligned-crop coordinates against the
differentiable recognisers (``optimise``, with its torch transformations in ``eot``), its
verification with the real recognisers through the real composite (``verify``), building
a profile from those (``build``: what the command line and the panel's enrolment step
call), refining a worn cloak in the background during a call (``refine``), a cloak per
person of a recorded video (``tracks``: ``process --two-pass``) and the evaluation protocol
on identity-labelled photos (``protocol``: ``eval --cloak``); the second form measured on
that protocol, the generic model fine-tuned on the person (``finetune``: it is handed the
model, since loading it needs ``nets``). The profile file the cloak
is saved in is :mod:`livedeid.io.profile`, because the patient's pipeline loads it.
May import: ``core``, ``tracking``, ``protect``, ``recognizers``, ``io``, ``evaluation``.
torch only in ``optimise``, ``eot`` and ``finetune`` (``build`` imports the first two when it runs); nothing in ``pipeline`` or ``protect`` imports
this package (the pipeline reads profiles through ``io``).
"""
