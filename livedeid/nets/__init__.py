"""torch-only networks.

Lives here: the de-identification autoencoder, the dlib ResNet port and ONNX export.
May import: ``livedeid.core`` and torch. Nothing on the patient's CPU path imports this.
"""
