"""PFDepth (ACM MM 2025): joint pinhole-fisheye depth through a Gaussian-splatted volume."""
