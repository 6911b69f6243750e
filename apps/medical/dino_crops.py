"""DINO's multi-crop augmentation for grey-level slices, batched in torch (no PIL/torchvision).

:class:`MultiCrop`: 2 global crops of the ViT's input size and N local crops of 96/224 of it
(:func:`local_crop_size`): random resized crops (global scale 0.4-1, local 0.05-0.4, aspect 3/4-4/3) with
horizontal flips, intensity jitter (contrast x0.6-1.4 around the mean, shift of +-0.4 in z-score units;
p 0.8), Gaussian blur (p 1.0 / 0.1 / 0.5 for global 1 / global 2 / local), solarisation (global 2, p 0.2).
Randomness comes from the ``torch.Generator`` passed in, so a step's crops are reproducible.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

__all__ = ["MultiCrop", "gaussian_blur", "local_crop_size", "random_resized_crop"]


def local_crop_size(image_size: int, patch_size: int) -> int:
    """DINO's local/global size ratio (96/224) at ``image_size``, rounded to whole patches (>= 1 patch)."""
    return patch_size * max(1, round(image_size * 96 / 224 / patch_size))


def _uniform(low: float, high: float, n: int, g: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=g)


class MultiCrop:
    """DINO's multi-crop for grey-level (z-scored) images, batched: ``(b, C, S, S) -> [2 x (b, C, S, S),
    local_crops x (b, C, L, L)]``. Randomness comes from the ``torch.Generator`` passed in (CPU)."""

    def __init__(
        self,
        global_size: int,
        local_size: int,
        local_crops: int = 6,
        *,
        global_scale: tuple[float, float] = (0.4, 1.0),
        local_scale: tuple[float, float] = (0.05, 0.4),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        jitter_p: float = 0.8,
        max_sigma: float = 1.0,
    ) -> None:
        if local_crops < 0:
            raise ValueError(f"MultiCrop: local_crops must be >= 0, got {local_crops}")
        self.global_size, self.local_size, self.local_crops = global_size, local_size, local_crops
        self.global_scale, self.local_scale, self.ratio = global_scale, local_scale, ratio
        self.jitter_p, self.max_sigma = jitter_p, max_sigma

    def __call__(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        g = generator
        crops = [
            self.view(images, self.global_size, self.global_scale, g, blur_p=1.0, solarize_p=0.0),
            self.view(images, self.global_size, self.global_scale, g, blur_p=0.1, solarize_p=0.2),
        ]
        for _ in range(self.local_crops):
            crops.append(self.view(images, self.local_size, self.local_scale, g, blur_p=0.5, solarize_p=0.0))
        return crops

    def view(
        self,
        images: Tensor,
        size: int,
        scale: tuple[float, float],
        g: torch.Generator,
        *,
        blur_p: float,
        solarize_p: float,
    ) -> Tensor:
        x = random_resized_crop(images, size, scale, self.ratio, g)
        b = x.shape[0]
        dims = (1, 2, 3)
        on = (torch.rand(b, generator=g) < self.jitter_p).float().view(b, 1, 1, 1)
        contrast = _uniform(0.6, 1.4, b, g).view(b, 1, 1, 1)
        shift = _uniform(-0.4, 0.4, b, g).view(b, 1, 1, 1)
        mean = x.mean(dim=dims, keepdim=True)
        jittered = (x - mean) * contrast + mean + shift
        x = on * jittered + (1 - on) * x
        if blur_p > 0:
            on = (torch.rand(b, generator=g) < blur_p).float().view(b, 1, 1, 1)
            sigma = _uniform(0.1, self.max_sigma, b, g)
            x = on * gaussian_blur(x, sigma) + (1 - on) * x
        if solarize_p > 0:
            on = (torch.rand(b, generator=g) < solarize_p).view(b, 1, 1, 1)
            low, high = x.amin(dim=dims, keepdim=True), x.amax(dim=dims, keepdim=True)
            x = torch.where(on & (x >= (low + high) / 2), low + high - x, x)
        return x.contiguous()


def random_resized_crop(
    images: Tensor,
    size: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    g: torch.Generator,
    flip_p: float = 0.5,
) -> Tensor:
    """A random box per image (area fraction in ``scale``, aspect ratio in ``ratio``, log-uniform),
    resampled bilinearly to ``size x size``, mirrored left-right with ``flip_p``: ``(b, C, H, W) ->
    (b, C, size, size)``."""
    b = images.shape[0]
    area = _uniform(scale[0], scale[1], b, g)
    aspect = torch.exp(_uniform(math.log(ratio[0]), math.log(ratio[1]), b, g))
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # width as a fraction of the image width
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(b, generator=g) * 2 - 1) * (1 - w)  # centre in [-1, 1] coordinates
    cy = (torch.rand(b, generator=g) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(b, generator=g) < flip_p, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = w * flip, cx
    theta[:, 1, 1], theta[:, 1, 2] = h, cy
    theta = theta.to(images.device, images.dtype)
    grid = F.affine_grid(theta, [b, images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur with one ``sigma`` (pixels) per image: ``(b, C, H, W) -> same``."""
    b, c, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (offsets[None] / sigma.to(x)[:, None]) ** 2)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (b * c, k)
    y = F.pad(x.reshape(1, b * c, h, w), (radius, radius, radius, radius), mode="replicate")
    y = F.conv2d(y, kernel[:, None, :, None], groups=b * c)
    y = F.conv2d(y, kernel[:, None, None, :], groups=b * c)
    return y.reshape(b, c, h, w)
