"""Geometry shared by every stage: SE(3), camera models, boxes."""
