"""Real face recognisers used to measure (and attack) privacy.

Lives here: the ``Recognizer`` interface, its registry and the "largest face" enrolment
rule (``base``); dlib (``dlib``), SFace with its YuNet detector (``sface``) and Human's
FaceRes (``faceres``); ONNX loading, de-quantisation and the ONNX -> torch interpreter
(``onnx_torch``); the TF.js graph-model reader and TF.js -> torch interpreter
(``tfjs_torch``, its ops in ``tfjs_ops``, torch); the
calibration of livedeid crops onto recogniser chips (``chips``); the recognisers as frozen
differentiable torch heads on livedeid crops (``heads``, torch; training and the cloak's
optimisation only).
May import: ``core``, ``tracking``; ``livedeid.nets`` for the dlib port (torch, lazily).
"""
