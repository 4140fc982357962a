"""perception: a distributed multi-sensor perception pipeline for autonomous driving."""

__version__ = "0.1.0"
