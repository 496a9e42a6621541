"""Incremental CIFAR-100's input pipeline (spec/problems.md §4) on whole batches, on any device.

Pixels are divided by 255 and normalised per channel; then train and test images (never validation)
are flipped horizontally with p = 0.5, cropped to 32×32 from a reflect-padded 40×40, and rotated by
an angle uniform in [0°, 15°] (nearest, fill 0) — augmentation after normalisation, as the original.

torchvision's v2 transforms draw one set of parameters per call from the global RNG, so on a batch
they would move every image alike, and per-image calls cost 3 kernel launches per image. Here every
image gets its own parameters, drawn from the caller's generator (on the CPU, so a run's draws do
not depend on the device), and each transform is one batched op that tests pin to torchvision's
per-image functional (`v2.functional.horizontal_flip`, `pad`+`crop`, `rotate`).
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

MEAN = (0.5071, 0.4865, 0.4409)
STD = (0.2673, 0.2564, 0.2762)
PADDING = 4
MAX_DEGREES = 15.0


def normalise(images: torch.Tensor) -> torch.Tensor:
    """uint8 N×3×H×W → float, /255 then (x − mean)/std per channel."""
    mean = torch.tensor(MEAN, device=images.device).reshape(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).reshape(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


def draw_augmentation(batch: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Each image's flip, crop offsets (top, left) and angle in degrees, from `generator` (CPU)."""
    return {
        "flip": torch.rand(batch, generator=generator) < 0.5,
        "offsets": torch.randint(0, 2 * PADDING + 1, (batch, 2), generator=generator),
        "degrees": torch.rand(batch, generator=generator, dtype=torch.float64) * MAX_DEGREES,
    }


def augment(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Flip, reflect-pad crop, rotate: each image of the float batch `x` by its own parameters."""
    device = x.device
    flip = params["flip"].to(device)
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    x = _crop(F.pad(x, (PADDING,) * 4, mode="reflect"), params["offsets"].to(device), x.shape[-2:])
    return _rotate(x, params["degrees"])


def _crop(padded: torch.Tensor, offsets: torch.Tensor, size: torch.Size) -> torch.Tensor:
    height, width = size
    rows = offsets[:, 0, None] + torch.arange(height, device=padded.device)  # (B, H)
    cols = offsets[:, 1, None] + torch.arange(width, device=padded.device)  # (B, W)
    batch = torch.arange(len(padded), device=padded.device)[:, None, None, None]
    channels = torch.arange(padded.shape[1], device=padded.device)[None, :, None, None]
    return padded[batch, channels, rows[:, None, :, None], cols[:, None, None, :]]


def _rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Counter-clockwise about the centre, nearest neighbour, zeros outside — torchvision's rotate,
    which samples through the same inverse affine grid (align_corners=False)."""
    radians = degrees * (math.pi / 180.0)
    cos, sin = torch.cos(radians), torch.sin(radians)
    zero = torch.zeros_like(cos)
    # output → input coordinates (x right, y down): the inverse of a counter-clockwise turn on screen
    theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="nearest", padding_mode="zeros", align_corners=False)
