"""train-bundle's CPU shortcuts: frozen depthwise kernels, the encoder's BatchNorm folded."""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from pneumonode.model.acceleration import fold_batchnorm, freeze_depthwise, unfold
from pneumonode.model.network import build_unet

ENCODER = "timm-tf_efficientnet_lite0"


def _network() -> torch.nn.Module:
    """A Lite0 U-Net whose BatchNorm layers hold non-trivial statistics and affine weights."""
    torch.manual_seed(0)
    model = build_unet(ENCODER, classification_head=True)
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) - 0.5)
            module.running_var.copy_(torch.rand(n, generator=generator) * 1.5 + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_((torch.rand(n, generator=generator) - 0.5) * 0.4)
    return model.eval()


def _batchnorms(module: torch.nn.Module) -> int:
    return sum(isinstance(m, torch.nn.BatchNorm2d) for m in module.modules())


@torch.no_grad()
def test_folding_keeps_the_function_and_unfolding_the_saved_layout() -> None:
    model = _network()
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    mask, image = model(x)
    before = _batchnorms(model.encoder)

    folds = fold_batchnorm(model)
    assert len(folds) == before and _batchnorms(model.encoder) == 0
    assert _batchnorms(model.decoder) > 0  # the decoder keeps its BatchNorm
    folded_mask, folded_image = model(x)
    torch.testing.assert_close(folded_mask, mask, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(folded_image, image, rtol=1e-4, atol=1e-4)

    restored = unfold(model, folds)
    plain = build_unet(ENCODER, classification_head=True)
    assert restored.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(restored.state_dict())
    plain.eval()
    plain_mask, plain_image = plain(x)
    torch.testing.assert_close(plain_mask, mask, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(plain_image, image, rtol=1e-4, atol=1e-4)
    assert _batchnorms(model.encoder) == 0  # unfold copies; the training network stays folded


def test_frozen_depthwise_kernels_stay_while_the_rest_learns() -> None:
    model = _network()
    frozen = freeze_depthwise(model)
    depthwise = [
        m
        for m in model.encoder.modules()
        if isinstance(m, torch.nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
    ]
    assert frozen == len(depthwise) > 10
    fold_batchnorm(model)
    assert all(m.bias is not None and not m.bias.requires_grad for m in depthwise)
    kernels = [m.weight.detach().clone() for m in depthwise]
    stem = model.encoder.conv_stem.weight.detach().clone()

    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    x = torch.rand(2, 1, 64, 64)
    mask, image = model(x)
    loss = F.binary_cross_entropy_with_logits(mask, torch.ones_like(mask)) + image.mean()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()

    assert all(torch.equal(m.weight, k) for m, k in zip(depthwise, kernels, strict=True))
    # gradients still flow through the frozen layers to the stem before them
    assert not torch.equal(model.encoder.conv_stem.weight, stem)
