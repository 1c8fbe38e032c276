"""torch-only networks.

Lives here: the de-identification autoencoder (with its ONNX export) and the dlib ResNet port.
May import: ``livedeid.core`` and torch. Nothing on the patient's CPU path imports this.
"""
