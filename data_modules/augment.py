"""Training augmentation applied to whole batches of uint8 images on the training device.

One gather per batch crops every image at its own random offset and mirrors a random half of
them; no Python loop runs over samples. Random numbers come from torch's global generator of
the images' device, so ``lightning.seed_everything`` makes a run reproducible.
"""

from __future__ import annotations

import torch
from torch import Tensor

PAD_MODES = ("reflect", "zeros")


class RandomCropFlip:
    """Random crop with padding and random horizontal flip of a batch (N x C x H x W).

    Each image is shifted by up to ``padding`` pixels in each direction, as if it had been
    padded by ``padding`` pixels on every side and a crop of the original size cut at a
    random position; the uncovered border is filled by reflection or with zeros. Then each
    image is mirrored left to right with probability one half. Shape, dtype and device are
    kept, and labels are untouched since only the images pass through.

    Args:
        padding: Largest shift in pixels; 0 turns cropping off.
        pad_mode: ``"reflect"`` (mirror the image at its border) or ``"zeros"`` (black).
        flip: Whether to mirror a random half of the images.
    """

    def __init__(self, padding: int = 4, pad_mode: str = "reflect", flip: bool = True) -> None:
        if padding < 0:
            raise ValueError(f"padding must be 0 or more, got {padding}")
        if pad_mode not in PAD_MODES:
            raise ValueError(f"unknown pad_mode {pad_mode!r}; choose one of {PAD_MODES}")
        self.padding = padding
        self.pad_mode = pad_mode
        self.flip = flip

    def __repr__(self) -> str:
        return (f"RandomCropFlip(padding={self.padding}, pad_mode={self.pad_mode!r}, "
                f"flip={self.flip})")

    def _source_positions(self, n: int, size: int, device: torch.device) -> Tensor:
        """Source row (or column) of each output position for each image: N x size."""
        shift = torch.randint(-self.padding, self.padding + 1, (n, 1), device=device)
        positions = torch.arange(size, device=device).unsqueeze(0) + shift
        if self.pad_mode == "reflect" and size > 1:
            positions = positions.abs()
            positions = torch.where(positions > size - 1, 2 * (size - 1) - positions, positions)
        return positions

    def __call__(self, images: Tensor) -> Tensor:
        if images.dim() != 4:
            raise ValueError(f"expected a batch N x C x H x W, got shape {tuple(images.shape)}")
        n, channels, height, width = images.shape
        device = images.device
        if n == 0 or (self.padding == 0 and not self.flip):
            return images
        rows = self._source_positions(n, height, device)  # (N, H)
        cols = self._source_positions(n, width, device)  # (N, W)
        if self.flip:
            mirrored = torch.rand(n, device=device) < 0.5
            cols = torch.where(mirrored.unsqueeze(1), cols.flip(1), cols)
        inside = ((rows >= 0) & (rows < height)).unsqueeze(2) & (
            (cols >= 0) & (cols < width)).unsqueeze(1)  # (N, H, W)
        batch = torch.arange(n, device=device).view(n, 1, 1, 1)
        channel = torch.arange(channels, device=device).view(1, channels, 1, 1)
        out = images[
            batch,
            channel,
            rows.clamp(0, height - 1).view(n, 1, height, 1),
            cols.clamp(0, width - 1).view(n, 1, 1, width),
        ]  # (N, C, H, W)
        if self.pad_mode == "zeros" and self.padding > 0:
            out = out * inside.unsqueeze(1).to(out.dtype)
        return out
