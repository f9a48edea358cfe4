"""Faces in ordinary photos: detectors and their framing (`detectors`), and `predict` on photo files."""
