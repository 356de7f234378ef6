"""crumpets.train.models: ResNets on sample dicts."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from crumpets.train import models
from crumpets.train.loss import CrossEntropyLoss

CIFAR = {"resnet20": 20, "resnet32": 32, "resnet44": 44, "resnet56": 56, "resnet110": 110}
IMAGENET = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101, "resnet152": 152}


def weighted_layers(net):
    """Convolutions and linear layers on the main path: the depth in a ResNet's name."""
    return sum(
        isinstance(m, (nn.Conv2d, nn.Linear)) and ".shortcut" not in name
        for name, m in net.named_modules()
    )


@pytest.mark.parametrize(
    ("name", "size", "depth"),
    [
        *[(name, 32, depth) for name, depth in CIFAR.items()],
        *[(name, 64, depth) for name, depth in IMAGENET.items()],
    ],
)
def test_output_shape_and_depth(name, size, depth):
    net = getattr(models, name)(num_classes=7)
    sample = {"image": torch.rand(2, 3, size, size)}
    with torch.no_grad():
        out = net(sample)
    assert out is sample and out["output"].shape == (2, 7)
    assert weighted_layers(net) == depth


def test_cifar_resnet20_has_the_papers_parameter_count():
    # 0.27M in He et al. 2016, table 6: zero-padding shortcuts have no parameters
    assert sum(p.numel() for p in models.resnet20().parameters()) == 269_722


def test_uint8_images_are_scaled_to_unit_range():
    torch.manual_seed(0)
    net = models.resnet20().eval()
    images = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    with torch.no_grad():
        from_uint8 = net({"image": images})["output"]
        from_float = net({"image": images.float() / 255})["output"]
    torch.testing.assert_close(from_uint8, from_float)


def test_keys_and_channels_are_configurable():
    net = models.resnet18(num_classes=3, in_channels=1, input_key="x", output_key="y")
    with torch.no_grad():
        sample = net({"x": torch.zeros(2, 1, 64, 64, dtype=torch.uint8)})
    assert sample["y"].shape == (2, 3) and "output" not in sample
    with pytest.raises(KeyError, match=r"needs sample\['x'\]; the sample has \['image'\]"):
        net({"image": torch.zeros(2, 1, 64, 64)})


def test_other_integer_images_are_rejected():
    with pytest.raises(TypeError, match="int32"):
        models.resnet20()({"image": torch.zeros(2, 3, 32, 32, dtype=torch.int32)})


@pytest.mark.parametrize(("name", "size"), [("resnet20", 16), ("resnet18", 32)])
def test_a_few_sgd_steps_reduce_the_loss(name, size):
    torch.manual_seed(0)
    net = getattr(models, name)(num_classes=4)
    images = torch.randint(0, 256, (4, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 4, (4, 1))
    loss_fn = CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.02)
    losses = []
    for _ in range(6):
        loss = loss_fn(net({"image": images, "label": labels}))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses
