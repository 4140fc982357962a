"""Segmentation losses for the map branch: cross-entropy and the Lovász-softmax loss.

Lovász-softmax: Berman, Rannen Triki, Blaschko, "The Lovász-Softmax loss: A tractable surrogate for
the optimization of the intersection-over-union measure in neural networks", CVPR 2018 (Alg. 1-2):
per class, the sorted errors ``|1[y = c] - p_c|`` dotted with the gradient of the Lovász extension
of the Jaccard loss, averaged over the classes present.
"""
from __future__ import annotations

import torch


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """Gradient of the Lovász extension of the Jaccard loss w.r.t. sorted errors ``[..., P]``."""
    gts = fg_sorted.sum(-1, keepdim=True)
    inter = gts - fg_sorted.cumsum(-1)
    union = gts + (1 - fg_sorted).cumsum(-1)
    jac = 1.0 - inter / union
    return torch.cat([jac[..., :1], jac[..., 1:] - jac[..., :-1]], dim=-1)


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore: int = 255) -> torch.Tensor:
    """``probs [C, P]`` (softmax over C), ``labels [P]`` → scalar; 0 when no pixel is labelled.

    All classes in one sort; the mean is over the classes present.
    """
    keep = labels != ignore
    probs, labels = probs[:, keep], labels[keep]
    if labels.numel() == 0:
        return probs.sum() * 0.0
    fg = torch.nn.functional.one_hot(labels, probs.shape[0]).T.to(probs.dtype)  # [C, P]
    err, perm = torch.sort((fg - probs).abs(), dim=1, descending=True)
    per_class = (err * lovasz_grad(torch.gather(fg, 1, perm))).sum(1)
    present = fg.sum(1) > 0
    return per_class[present].mean()
