"""Inference building blocks shared by the edge agent, the DC worker and the benches.

A layer below the services: ``inference.vision`` (face detection + FER pipeline and its
construction from settings), ``inference.images`` (JPEG decoding), ``inference.model_slot``
(hot-swappable model holder) and ``inference.resample`` (8 kHz -> 16 kHz audio).
"""
