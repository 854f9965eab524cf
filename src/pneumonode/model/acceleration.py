"""Training-time shortcuts for the CPU that leave the saved network unchanged.

Profiled on this project's CPU (2 cores, bf16 autocast, channels-last; ``bench/training.py``),
an EfficientNet-Lite U-Net training step spends most of its time in the backward pass of the
encoder's depthwise convolutions: oneDNN computes their weight gradient 30 to 60 times slower
than their forward pass (a per-channel reduction it does not vectorise), and the encoder's
BatchNorm layers add a forward and a backward pass over every activation. Two options remove them:

``freeze_depthwise``
    The encoder's depthwise kernels (spatial filters learnt on ImageNet, 2 % of the encoder's
    weights) stop learning; their input gradient, which is cheap, is still computed, so every
    layer before them keeps learning. A standard transfer-learning choice for MobileNet-style
    encoders.
``freeze_stages``
    The encoder's stem and its first N stages stop learning altogether. Nothing before them
    needs a gradient, so backpropagation stops above them: no weight or input gradient is
    computed in the layers that work at the highest resolutions, where a step spends most of
    its memory traffic. Their BatchNorm layers stay at their running statistics
    (:func:`hold_frozen_norms`). Generic ImageNet edge and texture filters; the U-Net's decoder
    still learns from their outputs through the skip connections.
``fold_batchnorm``
    The encoder's BatchNorm layers are frozen at their running statistics (as detectron2's
    ``FrozenBatchNorm2d``: batches of 8 give noisy statistics anyway) and folded into the
    convolution before each: ``w' = w * gamma / sqrt(var + eps)``, bias ``beta - mean * gamma /
    sqrt(var + eps)``; the layer keeps only its activation. The folded weights are what trains
    (a depthwise kernel frozen before folding keeps its bias frozen too).

:func:`unfold` gives back a network with the original layout (BatchNorm with mean 0, variance
``1 - eps``, weight 1 and the folded bias), computing the same function, so checkpoints written
from a folded run load into the node exactly like any other. The same weights can thus be
written in two layouts; :func:`average_weights` folds both networks before it averages them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

__all__ = [
    "Fold",
    "average_weights",
    "fold_batchnorm",
    "freeze_depthwise",
    "freeze_stages",
    "hold_frozen_norms",
    "unfold",
]

# (convolution, normalisation) attribute pairs in timm's EfficientNet blocks and stem
_PAIRS = (
    ("conv_stem", "bn1"),
    ("conv_pw", "bn1"),
    ("conv_dw", "bn2"),
    ("conv_pwl", "bn3"),
    ("conv_dw", "bn1"),  # DepthwiseSeparableConv: conv_dw -> bn1, conv_pw -> bn2
    ("conv_pw", "bn2"),
    ("conv_head", "bn2"),
)


@dataclass(frozen=True)
class Fold:
    """One folded pair: where it lives and the normalisation layer it replaced."""

    parent: str  # module path of the block holding both layers ("" for the encoder's root)
    conv: str
    norm: str
    original: nn.Module  # the BatchNorm (with its activation) as it was, for unfold


def freeze_depthwise(model: nn.Module) -> int:
    """Stop the encoder's depthwise convolution kernels from learning; returns how many."""
    frozen = 0
    for module in _encoder(model).modules():
        if (
            isinstance(module, nn.Conv2d)
            and module.groups > 1
            and module.groups == module.in_channels == module.out_channels
        ):
            module.weight.requires_grad_(False)
            frozen += 1
    return frozen


def freeze_stages(model: nn.Module, stages: int) -> int:
    """Stop the encoder's stem and its first ``stages`` stages (timm's ``blocks``) from
    learning; returns how many parameter tensors were frozen.

    Raises ValueError for an encoder without a stem and stages, or fewer stages than asked.
    """
    encoder = _encoder(model)
    blocks = getattr(encoder, "blocks", None)
    stem = [
        m for n in ("conv_stem", "bn1") if isinstance(m := getattr(encoder, n, None), nn.Module)
    ]
    if not isinstance(blocks, nn.Sequential) or len(stem) != 2:
        raise ValueError("freeze_stages needs an EfficientNet encoder (conv_stem, bn1, blocks)")
    if not 0 <= stages <= len(blocks):
        raise ValueError(f"the encoder has {len(blocks)} stages, not {stages}")
    frozen = 0
    for module in [*stem, *list(blocks)[:stages]]:
        for parameter in module.parameters():
            if parameter.requires_grad:
                parameter.requires_grad_(False)
                frozen += 1
    hold_frozen_norms(model)
    return frozen


def hold_frozen_norms(model: nn.Module) -> None:
    """Put the encoder's BatchNorm layers whose weights are frozen in eval mode (running
    statistics used, not updated); call it after every ``model.train()``."""
    for module in _encoder(model).modules():
        if (
            isinstance(module, nn.modules.batchnorm._BatchNorm)
            and module.weight is not None
            and not module.weight.requires_grad
        ):
            module.eval()


def _encoder(model: nn.Module) -> nn.Module:
    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise ValueError("the network has no encoder to accelerate")
    return encoder


def _pairs(block: nn.Module) -> list[tuple[str, str]]:
    """The (conv, norm) pairs of ``block`` in forward order, each norm used once."""
    children = dict(block.named_children())
    if "conv_dw" in children and "conv_pw" in children and "conv_pwl" not in children:
        candidates: tuple[tuple[str, str], ...] = (("conv_dw", "bn1"), ("conv_pw", "bn2"))
    else:
        candidates = tuple(p for p in _PAIRS if p not in (("conv_dw", "bn1"), ("conv_pw", "bn2")))
    found = []
    for conv, norm in candidates:
        if isinstance(children.get(conv), nn.Conv2d) and isinstance(
            children.get(norm), nn.BatchNorm2d
        ):
            found.append((conv, norm))
    return found


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> list[Fold]:
    """Fold the encoder's BatchNorm layers into their convolutions, in place (see the module)."""
    encoder = _encoder(model)
    folds: list[Fold] = []
    for path, block in encoder.named_modules():
        for conv_name, norm_name in _pairs(block):
            conv: nn.Conv2d = getattr(block, conv_name)
            norm: nn.BatchNorm2d = getattr(block, norm_name)
            if norm.running_mean is None or norm.running_var is None:
                continue  # no running statistics to freeze
            gamma = norm.weight if norm.weight is not None else torch.ones_like(norm.running_var)
            beta = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_var)
            scale = gamma / torch.sqrt(norm.running_var + norm.eps)
            shift = beta - norm.running_mean * scale
            if conv.bias is not None:
                shift = shift + conv.bias * scale
            conv.weight.mul_(scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
            # a frozen kernel keeps a frozen shift: oneDNN computes the weight gradient whenever
            # the bias needs one, which would undo freeze_depthwise
            conv.bias = nn.Parameter(
                shift.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad
            )
            # what stays of the layer: its activation (timm's BatchNormAct2d) or nothing
            rest = nn.Sequential(
                getattr(norm, "drop", nn.Identity()), getattr(norm, "act", nn.Identity())
            )
            setattr(block, norm_name, rest)
            folds.append(Fold(path, conv_name, norm_name, copy.deepcopy(norm).cpu()))
    return folds


@torch.no_grad()
def unfold(model: nn.Module, folds: list[Fold]) -> nn.Module:
    """A copy of ``model`` with the original layer layout restored (same outputs)."""
    restored = copy.deepcopy(model)
    encoder = _encoder(restored)
    for fold in folds:
        block = encoder.get_submodule(fold.parent) if fold.parent else encoder
        conv: nn.Conv2d = getattr(block, fold.conv)
        norm = copy.deepcopy(fold.original).to(conv.weight.device)
        assert isinstance(norm, nn.BatchNorm2d) and conv.bias is not None
        assert norm.running_mean is not None and norm.running_var is not None
        norm.running_mean.zero_()
        norm.running_var.fill_(1.0 - norm.eps)
        if norm.weight is not None:
            norm.weight.fill_(1.0)
        if norm.bias is not None:
            norm.bias.copy_(conv.bias.detach())
        conv.bias = None
        setattr(block, fold.norm, norm)
    return restored


@torch.no_grad()
def average_weights(models: Sequence[nn.Module]) -> nn.Module:
    """The mean of several networks of one architecture, tensor by tensor (a "model soup": points
    on one fine-tuning path, e.g. a run's best epoch and the weights it started from).

    A checkpoint written from a folded run keeps its encoder's scale in the convolutions and one
    written plainly keeps it in BatchNorm (:func:`unfold`): the same function in two layouts,
    whose tensors must not be averaged as they stand. Each network's encoder is therefore folded
    first, the folded tensors averaged, and the usual layout restored. Integer buffers (batch
    counters) are the first network's. The inputs are left unchanged.
    """
    if not models:
        raise ValueError("nothing to average")
    folded = [copy.deepcopy(model).float().cpu().eval() for model in models]
    folds = [fold_batchnorm(model) for model in folded]
    states = [model.state_dict() for model in folded]
    for state in states[1:]:
        if state.keys() != states[0].keys() or any(
            state[k].shape != v.shape for k, v in states[0].items()
        ):
            raise ValueError("the networks differ in architecture: their tensors do not match")
    for name, tensor in states[0].items():
        if tensor.is_floating_point():
            tensor.copy_(torch.stack([state[name] for state in states]).mean(dim=0))
    return unfold(folded[0], folds[0]).eval()
