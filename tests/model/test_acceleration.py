"""train-bundle's CPU shortcuts: frozen depthwise kernels, the encoder's BatchNorm folded, the
stem and first stages frozen."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from pneumonode.model.acceleration import (
    average_weights,
    fold_batchnorm,
    freeze_depthwise,
    freeze_stages,
    hold_frozen_norms,
    unfold,
)
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


def _step(model: torch.nn.Module) -> None:
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    mask, image = model(torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3)))
    loss = F.binary_cross_entropy_with_logits(mask, torch.ones_like(mask)) + image.mean()
    loss.backward()  # type: ignore[no-untyped-call]
    optimizer.step()


def test_frozen_stages_neither_learn_nor_get_gradients_nor_update_statistics() -> None:
    model = _network()
    frozen_stages = [model.encoder.conv_stem, model.encoder.bn1, *model.encoder.blocks[:2]]
    learning = model.encoder.blocks[2]
    assert freeze_stages(model, 2) == sum(1 for m in frozen_stages for _ in m.parameters())
    before = [t.detach().clone() for m in frozen_stages for t in m.state_dict().values()]
    later = [p.detach().clone() for p in learning.parameters()]

    model.train()
    hold_frozen_norms(model)  # as the training loop does after each model.train()
    assert not model.encoder.bn1.training and model.encoder.blocks[2].training
    _step(model)

    after = [t for m in frozen_stages for t in m.state_dict().values()]
    # weights and BatchNorm running statistics alike are unchanged ...
    assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))
    # ... no gradient was computed for them (backpropagation stopped above them) ...
    assert all(p.grad is None for m in frozen_stages for p in m.parameters())
    # ... and the stages after them, the decoder and the head learn
    assert any(not torch.equal(p, q) for p, q in zip(learning.parameters(), later, strict=True))


def test_frozen_stages_combine_with_folding_and_save_the_usual_layout() -> None:
    model = _network()
    freeze_stages(model, 1)
    freeze_depthwise(model)
    folds = fold_batchnorm(model)
    stem_bias = model.encoder.conv_stem.bias
    assert stem_bias is not None and not stem_bias.requires_grad  # a frozen stem keeps its shift
    model.train()
    _step(model)
    restored = unfold(model, folds)
    plain = build_unet(ENCODER, classification_head=True)
    plain.load_state_dict(restored.state_dict())


def test_freezing_more_stages_than_the_encoder_has_is_refused() -> None:
    model = _network()
    with pytest.raises(ValueError, match="stages"):
        freeze_stages(model, len(model.encoder.blocks) + 1)


def _relaid(model: torch.nn.Module) -> torch.nn.Module:
    """The same function in the layout a folded training run saves (scale in the convolutions)."""
    twin = copy.deepcopy(model)
    return unfold(twin, fold_batchnorm(twin)).eval()


def test_averaging_folds_first_so_two_layouts_of_one_network_average_to_it() -> None:
    model = _network()
    twin = _relaid(model)
    x = torch.rand(2, 1, 64, 64, generator=torch.Generator().manual_seed(3))
    mask, image = model(x)
    assert any(  # the twin's tensors differ although its function does not
        not torch.allclose(a, b)
        for a, b in zip(model.state_dict().values(), twin.state_dict().values(), strict=True)
    )
    naive = copy.deepcopy(model)
    naive.load_state_dict(
        {
            k: (v + twin.state_dict()[k]) / 2 if v.is_floating_point() else v
            for k, v in model.state_dict().items()
        }
    )
    assert (naive(x)[0] - mask).abs().max() > 1e-2  # averaging the raw tensors breaks it

    averaged = average_weights([model, twin])
    averaged_mask, averaged_image = averaged(x)
    torch.testing.assert_close(averaged_mask, mask, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(averaged_image, image, rtol=1e-4, atol=1e-4)
    assert averaged.state_dict().keys() == model.state_dict().keys()  # the usual layout
    assert _batchnorms(model.encoder) > 0 and _batchnorms(twin.encoder) > 0  # inputs unchanged


def test_averaging_two_networks_gives_their_midpoint_and_refuses_a_mismatch() -> None:
    first = _network()
    second = copy.deepcopy(first)
    with torch.no_grad():
        second.segmentation_head[0].bias.add_(1.0)  # outside the encoder: averaged as it is
    averaged = average_weights([first, second])
    bias = averaged.segmentation_head[0].bias
    torch.testing.assert_close(bias, first.segmentation_head[0].bias + 0.5)
    with pytest.raises(ValueError, match="differ in architecture"):
        average_weights([first, build_unet("timm-tf_efficientnet_lite1", classification_head=True)])
    with pytest.raises(ValueError, match="nothing to average"):
        average_weights([])
