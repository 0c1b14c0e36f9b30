"""Output shapes of the CIFAR-10 networks, and the fast network's options and schedule."""

from __future__ import annotations

import pytest
import torch

from lightning_modules.classifier import ImageClassifier
from lightning_modules.fast_net import FastNet, count_parameters
from lightning_modules.networks import NETWORKS, ConvNet, build_network

NETWORK_CASES = {
    "convnet-cifar10-baseline": ("convnet", {"in_shape": (3, 32, 32), "activation": "relu"}),
    "convnet-mnist": ("convnet", {}),
    "fast-default": ("fast", {}),
    "fast-small": ("fast", {"widths": (16, 32, 64), "stem_channels": 8}),
    "fast-deep": ("fast", {"widths": (8, 16), "stem_channels": 8, "depth": 3}),
    "fast-one-block": ("fast", {"widths": (12,), "stem_channels": 4, "depth": 1}),
}


@pytest.mark.parametrize("case", NETWORK_CASES, ids=list(NETWORK_CASES))
def test_each_network_maps_a_batch_to_ten_logits(case: str) -> None:
    name, kwargs = NETWORK_CASES[case]
    net = build_network(name, **kwargs)
    in_shape = kwargs.get("in_shape", (3, 32, 32) if name == "fast" else (1, 28, 28))

    logits = net(torch.randn(5, *in_shape))

    assert logits.shape == (5, 10)
    assert net.output.out_features == 10


def test_baseline_derives_flatten_size_from_the_cifar10_shape() -> None:
    net = ConvNet(in_shape=(3, 32, 32))

    assert net.conv1.in_channels == 3
    # Four unpadded 3 x 3 convolutions leave 16 x 24 x 24 values to flatten.
    assert net.fc1.in_features == 16 * 24 * 24


def test_fast_net_is_registered_and_sized_like_the_speed_records() -> None:
    assert NETWORKS["fast"] is FastNet
    net = FastNet()

    assert count_parameters(net) == 1_973_176
    assert [block.conv1.out_channels for block in net.blocks] == [64, 256, 256]


def test_fast_net_width_depth_and_scale_are_parameters() -> None:
    net = FastNet(widths=(8, 16, 32), stem_channels=4, depth=3, logit_scale=0.5)
    images = torch.randn(2, 3, 32, 32)

    assert sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()) == 1 + 3 * 3
    scaled = net(images)
    net.logit_scale = 1.0
    assert torch.allclose(scaled, net(images) * 0.5)


@pytest.mark.parametrize("kwargs,message", [
    ({"widths": ()}, "at least one block"),
    ({"widths": (4,) * 6}, "below 1 pixel"),
    ({"depth": 0}, "depth must be at least 1"),
    ({"activation": "nope"}, "unknown activation"),
], ids=["no-blocks", "too-many-blocks", "zero-depth", "bad-activation"])
def test_fast_net_rejects_impossible_shapes(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        FastNet(**kwargs)


def test_classifier_trains_fast_net_in_channels_last_with_flip_tta() -> None:
    model = ImageClassifier(network={"name": "fast", "widths": (8, 16), "stem_channels": 4},
                            channels_last=True, flip_tta=True, label_smoothing=0.2)
    images, labels = torch.randn(6, 3, 32, 32), torch.randint(0, 10, (6,))

    loss = model._step((images, labels), "train")
    loss.backward()

    assert model.num_classes == 10 and loss.item() > 0
    assert model.predict_step((images, labels), 0).shape == (6,)


def test_linear_schedule_warms_up_then_decays_with_fixed_momentum() -> None:
    model = ImageClassifier(network={"name": "fast", "widths": (8,), "stem_channels": 4},
                            lr=0.4, momentum=0.9, nesterov=True, lr_schedule="linear",
                            warmup_fraction=0.25)
    fake_trainer = type("FakeTrainer", (), {"estimated_stepping_batches": 100})()
    model._trainer = fake_trainer  # type: ignore[assignment]
    config = model.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]

    rates, momenta = [], []
    for _ in range(100):
        rates.append(optimizer.param_groups[0]["lr"])
        momenta.append(optimizer.param_groups[0]["momentum"])
        optimizer.step()
        scheduler.step()

    assert max(rates) == pytest.approx(0.4) and rates.index(max(rates)) == 24
    assert rates[0] < 0.02 and rates[-1] < 0.01
    assert all(b < a for a, b in zip(rates[25:], rates[26:], strict=False))
    assert set(momenta) == {0.9}


def test_warmup_fraction_is_validated() -> None:
    with pytest.raises(ValueError, match="warmup_fraction"):
        ImageClassifier(warmup_fraction=1.0)
