"""Thin commands: parse, build settings, call one entry point, print.

May import: anything; the panel, torch-side packages and recognisers only inside the
commands that need them, so ``livedeid --help`` and the patient's commands stay light.
"""
