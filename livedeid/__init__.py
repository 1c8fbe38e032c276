"""livedeid: real-time face de-identification that keeps the rPPG pulse."""

__version__ = "0.1.0"
