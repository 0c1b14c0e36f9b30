import math

import pytest
import torch
from torch import nn

from lightning_modules.networks import ACTIVATIONS, ConvNet, build_network

SPEC_CONV = (6, 32, 64, 16)
SPEC_DENSE = (256, 64, 10)


def spec_parameter_count() -> int:
    """Weights and biases of the Quiz 14 network, derived from its statement."""
    count, channels, side = 0, 1, 28
    for filters in SPEC_CONV:
        count += channels * filters * 3 * 3 + filters
        channels, side = filters, side - 2
    features = channels * side * side
    for units in SPEC_DENSE:
        count += features * units + units
        features = units
    return count


def test_quiz14_network_matches_specification():
    net = ConvNet()
    convs = [m for m in net if isinstance(m, nn.Conv2d)]
    linears = [m for m in net if isinstance(m, nn.Linear)]

    assert [c.out_channels for c in convs] == list(SPEC_CONV)
    assert all(c.kernel_size == (3, 3) and c.stride == (1, 1) and c.padding == (0, 0)
               for c in convs)
    assert [lin.out_features for lin in linears] == list(SPEC_DENSE)
    assert linears[0].in_features == 16 * 20 * 20
    assert not any(isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)) for m in net.modules())
    assert sum(p.numel() for p in net.parameters()) == spec_parameter_count() == 1_685_302


def test_an_activation_follows_every_hidden_layer_and_none_the_output():
    layers = list(ConvNet(activation="sigmoid"))
    weighted = [i for i, m in enumerate(layers) if isinstance(m, (nn.Conv2d, nn.Linear))]

    for i in weighted[:-1]:
        nxt = layers[i + 1]
        assert isinstance(nxt, nn.Sigmoid), f"layer {i} is followed by {nxt}"
    assert weighted[-1] == len(layers) - 1


@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
def test_output_shape_for_every_activation(activation):
    net = ConvNet(activation=activation)
    assert net(torch.zeros(5, 1, 28, 28)).shape == (5, 10)
    assert isinstance(net.act_fc1, ACTIVATIONS[activation])


def test_cifar_shaped_input_derives_channels_and_flatten_size():
    net = build_network("convnet", in_shape=(3, 32, 32))
    assert net.conv1.in_channels == 3
    assert net.fc1.in_features == 16 * 24 * 24
    assert net(torch.zeros(2, 3, 32, 32)).shape == (2, 10)


def test_pooling_follows_each_convolution_and_halves_the_image():
    net = ConvNet(conv_channels=(16, 32), dense_units=(128,), activation="relu", pool=True)
    names = [name for name, _ in net.named_children()]
    assert names[:6] == ["conv1", "act_conv1", "pool1", "conv2", "act_conv2", "pool2"]
    # 28 -> conv 26 -> pool 13 -> conv 11 -> pool 5 (rounded down)
    assert net.fc1.in_features == 32 * 5 * 5
    expected = (1 * 16 * 9 + 16) + (16 * 32 * 9 + 32) + (800 * 128 + 128) + (128 * 10 + 10)
    assert sum(p.numel() for p in net.parameters()) == expected
    assert net(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert not any(isinstance(m, nn.MaxPool2d) for m in ConvNet())


def test_glorot_init_zeroes_biases_and_bounds_weights():
    net = ConvNet(init="glorot")
    for layer in net:
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            fan_in = layer.weight[0].numel()
            fan_out = layer.weight.shape[0] * layer.weight[0, 0].numel()
            assert torch.all(layer.bias == 0)
            assert layer.weight.abs().max() <= math.sqrt(6 / (fan_in + fan_out))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "swish2"}, "unknown activation 'swish2'"),
        ({"init": "he"}, "unknown init 'he'"),
        ({"conv_channels": (8,) * 14}, "do not fit a 28x28 input"),
        ({"conv_channels": (8,) * 4, "pool": True}, "with pooling do not fit a 28x28 input"),
    ],
    ids=["activation", "init", "too-deep", "too-deep-pooled"],
)
def test_bad_network_arguments_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ConvNet(**kwargs)
