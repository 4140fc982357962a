"""Backbones shared by the detectors: voxel feature encoders, sparse 3D encoders, 2D BEV backbones.

Modules are imported where used (``from perception.models.backbones.sparse_encoder import
SparseEncoder``), so importing the package does not pull in spconv.
"""
