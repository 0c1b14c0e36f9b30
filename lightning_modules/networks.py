"""Plain ``nn.Module`` networks, kept apart from the LightningModule that trains them."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "sigmoid": nn.Sigmoid,
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "leaky_relu": nn.LeakyReLU,
    "softplus": nn.Softplus,
}

INITS = ("default", "glorot")


def make_activation(name: str) -> nn.Module:
    """Returns a fresh activation layer by name (one of ``ACTIVATIONS``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


def glorot_init(module: nn.Module) -> None:
    """Keras's default initialisation: Glorot-uniform weights and zero biases."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def feature_map_size(in_shape: Sequence[int], convolutions: int, kernel_size: int = 3,
                     pool: bool = False) -> tuple[int, int]:
    """Height and width left after unpadded convolutions, each optionally max-pooled 2 x 2.

    Raises:
        ValueError: Nothing is left of the image; the message names the convolution.
    """
    height, width = in_shape[-2], in_shape[-1]
    for i in range(1, convolutions + 1):
        height, width = height - kernel_size + 1, width - kernel_size + 1
        if pool:
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(
                f"{convolutions} unpadded {kernel_size}x{kernel_size} convolutions"
                f"{' with pooling' if pool else ''} do not fit a {in_shape[-2]}x{in_shape[-1]}"
                f" input: nothing is left after convolution {i}; use fewer convolutions or "
                f"smaller kernels{', or no pooling' if pool else ''}"
            )
    return height, width


class ConvNet(nn.Sequential):
    """The Quiz 14 family: unpadded 3 x 3 convolutions, then fully connected layers.

    With the defaults this is the Quiz 14 network for MNIST: convolutions of 6, 32, 64 and
    16 filters and dense layers of 256, 64 and 10 units, sigmoid after every layer but the
    output. Kernel size, stride 1, no padding and no pooling follow Keras's defaults, so each
    convolution shrinks the image by ``kernel_size - 1`` and the MNIST flatten holds
    16 x 20 x 20 = 6,400 values. The output layer returns logits.

    With ``pool`` a 2 x 2 max pooling follows each convolution's activation, halving the
    image (rounding down): the classic small, fast and well-generalising MNIST CNN, e.g.
    convolutions of 16 and 32 filters leave 32 x 5 x 5 = 800 values to flatten.

    Args:
        in_shape: Input (channels, height, width); (3, 32, 32) gives the CIFAR-10 baseline.
        conv_channels: Filters of each convolution, in order.
        dense_units: Units of each hidden fully connected layer, in order.
        num_classes: Units of the output layer.
        activation: Name of the activation after every hidden layer.
        kernel_size: Side of the square convolution kernels.
        init: ``"default"`` (PyTorch's) or ``"glorot"`` (Keras's Glorot-uniform, zero biases).
        pool: Whether a 2 x 2 max pooling follows each convolution.
    """

    def __init__(
        self,
        in_shape: Sequence[int] = (1, 28, 28),
        conv_channels: Sequence[int] = (6, 32, 64, 16),
        dense_units: Sequence[int] = (256, 64),
        num_classes: int = 10,
        activation: str = "sigmoid",
        kernel_size: int = 3,
        init: str = "default",
        pool: bool = False,
    ) -> None:
        if init not in INITS:
            raise ValueError(f"unknown init {init!r}; choose one of {INITS}")
        channels = in_shape[0]
        height, width = feature_map_size(in_shape, len(conv_channels), kernel_size, pool)
        layers: list[tuple[str, nn.Module]] = []
        for i, out_channels in enumerate(conv_channels, start=1):
            # (N, C, H, W) -> (N, out_channels, H - k + 1, W - k + 1), halved when pooling
            layers.append((f"conv{i}", nn.Conv2d(channels, out_channels, kernel_size)))
            layers.append((f"act_conv{i}", make_activation(activation)))
            if pool:
                layers.append((f"pool{i}", nn.MaxPool2d(2)))
            channels = out_channels
        # (N, C, H', W') -> (N, C * H' * W')
        layers.append(("flatten", nn.Flatten()))
        features = channels * height * width
        for i, units in enumerate(dense_units, start=1):
            layers.append((f"fc{i}", nn.Linear(features, units)))
            layers.append((f"act_fc{i}", make_activation(activation)))
            features = units
        layers.append(("output", nn.Linear(features, num_classes)))
        super().__init__(OrderedDict(layers))
        if init == "glorot":
            glorot_init(self)


NETWORKS: dict[str, Callable[..., nn.Module]] = {"convnet": ConvNet}


def build_network(name: str = "convnet", **kwargs: Any) -> nn.Module:
    """Builds a registered network from its name and keyword arguments."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; choose one of {sorted(NETWORKS)}")
    return NETWORKS[name](**kwargs)
