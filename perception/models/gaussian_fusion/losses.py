"""Segmentation losses for the map branch: cross-entropy and the Lovász-softmax loss.

Lovász-softmax: Berman, Rannen Triki, Blaschko, "The Lovász-Softmax loss: A tractable surrogate for
the optimization of the intersection-over-union measure in neural networks", CVPR 2018 (Alg. 1-2):
per class, the sorted errors ``|1[y = c] - p_c|`` dotted with the gradient of the Lovász extension
of the Jaccard loss, averaged over the classes present.
"""
from __future__ import annotations

import torch


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors ``[P]``."""
    gts = fg_sorted.sum()
    inter = gts - fg_sorted.cumsum(0)
    union = gts + (1 - fg_sorted).cumsum(0)
    jac = 1.0 - inter / union
    if len(fg_sorted) > 1:
        jac[1:] = jac[1:] - jac[:-1].clone()
    return jac


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore: int = 255) -> torch.Tensor:
    """``probs [C, P]`` (softmax over C), ``labels [P]`` → scalar; 0 when no pixel is labelled."""
    keep = labels != ignore
    probs, labels = probs[:, keep], labels[keep]
    if labels.numel() == 0:
        return probs.sum() * 0.0
    losses = []
    for c in torch.unique(labels):
        fg = (labels == c).float()
        err = (fg - probs[c]).abs()
        err_sorted, perm = torch.sort(err, descending=True)
        losses.append(torch.dot(err_sorted, lovasz_grad(fg[perm])))
    return torch.stack(losses).mean()
