"""Loss and metrics against hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pneumonode.model.losses import BceFocalDiceLoss, soft_dice
from pneumonode.model.metrics import auc, confusion, dice, iou, presence_metrics, siim_score

EMPTY = np.zeros((4, 4), bool)


def square(rows: slice, cols: slice) -> np.ndarray:
    mask = EMPTY.copy()
    mask[rows, cols] = True
    return mask


def test_empty_and_empty_is_perfect() -> None:
    assert dice(EMPTY, EMPTY) == 1.0 and iou(EMPTY, EMPTY) == 1.0


def test_empty_against_nonempty_is_zero() -> None:
    lesion = square(slice(0, 2), slice(0, 2))
    assert dice(EMPTY, lesion) == 0.0 and dice(lesion, EMPTY) == 0.0
    assert iou(lesion, EMPTY) == 0.0


def test_partial_overlap() -> None:
    a = square(slice(0, 2), slice(0, 2))  # 4 pixels
    b = square(slice(0, 2), slice(1, 3))  # 4 pixels, 2 shared
    assert confusion(a, b) == confusion(a, b).__class__(tp=2, fp=2, fn=2, tn=10)
    assert dice(a, b) == pytest.approx(2 * 2 / 8)
    assert iou(a, b) == pytest.approx(2 / 6)


def test_siim_score_is_mean_per_image_dice() -> None:
    assert siim_score([1.0, 0.0, 0.5]) == pytest.approx(0.5)


def test_auc_and_presence() -> None:
    assert auc([0.9, 0.8, 0.3, 0.1], [True, True, False, False]) == 1.0
    assert auc([0.1, 0.9], [True, False]) == 0.0
    assert auc([0.5, 0.5], [True, False]) == 0.5
    assert auc([0.5], [True]) is None
    metrics = presence_metrics([True, False, True, False], [True, True, False, False])
    assert metrics == {"sensitivity": 0.5, "specificity": 0.5}


def test_soft_dice_and_loss_by_hand() -> None:
    truth = torch.zeros(1, 1, 2, 2)
    truth[0, 0, 0, 0] = 1
    probability = torch.full((1, 1, 2, 2), 0.5)
    # (2 * 0.5 + 1) / (2 + 1 + 1) = 0.5
    assert soft_dice(probability, truth).item() == pytest.approx(0.5)
    logits = torch.zeros(1, 1, 2, 2)  # sigmoid = 0.5
    loss = BceFocalDiceLoss(bce_weight=1, dice_weight=1, gamma=2)(logits, truth)
    assert loss.item() == pytest.approx(np.log(2) + 0.25, rel=1e-5)


def test_empty_truth_and_confident_empty_prediction_cost_almost_nothing() -> None:
    loss = BceFocalDiceLoss()(torch.full((2, 1, 8, 8), -20.0), torch.zeros(2, 1, 8, 8))
    assert loss.item() < 1e-6


def test_gamma_focuses_on_hard_images() -> None:
    truth = torch.zeros(2, 1, 4, 4)
    truth[:, :, :2, :2] = 1
    logits = torch.full((2, 1, 4, 4), -4.0)
    logits[0, :, :2, :2] = 4.0  # image 0 well segmented, image 1 missed
    easy_share = []
    for gamma in (1.0, 3.0):
        fn = BceFocalDiceLoss(bce_weight=0, gamma=gamma)
        easy = fn(logits[:1], truth[:1]).item()
        hard = fn(logits[1:], truth[1:]).item()
        easy_share.append(easy / (easy + hard))
    assert easy_share[1] < easy_share[0]
    with pytest.raises(ValueError, match="gamma"):
        BceFocalDiceLoss(gamma=0)
