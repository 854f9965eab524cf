"""Training loss: binary cross-entropy plus focal Dice.

For logits ``z`` and truth ``g`` in {0, 1}, per image ``i`` with probabilities ``p = sigmoid(z)``::

    BCE   = mean over pixels of  -(w+ * g * log p + (1 - g) * log(1 - p))     (w+ = pos_weight)
    D_i   = (2 * sum(p * g) + eps) / (sum(p) + sum(g) + eps)                  (soft Dice)
    FD    = mean over images of (1 - D_i) ** gamma                            (focal Dice)
    loss  = bce_weight * BCE + dice_weight * FD

``gamma > 1`` shrinks the loss of images that are already well segmented, so the gradient goes to
the hard ones (small lesions dominate SIIM); ``gamma = 1`` is the plain Dice loss. An image with
an empty truth and an empty prediction has D = 1 (no loss) thanks to ``eps``.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F  # noqa: N812
from torch import nn

__all__ = ["BceFocalDiceLoss", "soft_dice"]


def soft_dice(probability: torch.Tensor, truth: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Soft Dice per image.

    Shape: probability, truth (N, 1, H, W) -> (N,).
    """
    dims = tuple(range(1, probability.ndim))
    intersection = (probability * truth).sum(dims)
    total = probability.sum(dims) + truth.sum(dims)
    return (2 * intersection + eps) / (total + eps)


class BceFocalDiceLoss(nn.Module):
    """``bce_weight * BCE(pos_weight) + dice_weight * mean((1 - soft Dice) ** gamma)``.

    Shape: logits, truth (N, 1, H, W) -> scalar.
    """

    def __init__(
        self,
        bce_weight: float = 1.0,
        dice_weight: float = 1.0,
        gamma: float = 2.0,
        pos_weight: float = 1.0,
        eps: float = 1.0,
    ) -> None:
        super().__init__()
        if gamma <= 0:
            raise ValueError(f"gamma must be positive, got {gamma}")
        self.bce_weight = bce_weight
        self.dice_weight = dice_weight
        self.gamma = gamma
        self.eps = eps
        self.register_buffer("pos_weight", torch.tensor([pos_weight]))

    def forward(self, logits: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        pos_weight = cast(torch.Tensor, self.pos_weight)
        bce = F.binary_cross_entropy_with_logits(logits, truth, pos_weight=pos_weight)
        dice = soft_dice(torch.sigmoid(logits), truth, self.eps)
        focal_dice = (1 - dice).clamp_min(0).pow(self.gamma).mean()
        return self.bce_weight * bce + self.dice_weight * focal_dice
