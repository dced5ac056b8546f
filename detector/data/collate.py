"""Batch collation: pad images of different sizes into one tensor."""

from __future__ import annotations

import math

import torch


class DetectionCollator:
    """Collate `(image, target)` samples into `(images (B, 3, H, W), targets list)`.

    Each image is copied into the top-left corner of one zero-filled batch tensor whose height and width are
    the largest in the batch rounded up to a multiple of `size_divisor` (the FPN's largest stride), so that
    every level's feature map has an integer size. Targets are returned unchanged; their `img_size` gives
    each image's valid (unpadded) area. Picklable, so it works with DataLoader workers; with
    `pin_memory=True` the DataLoader pins the returned batch.
    """

    def __init__(self, size_divisor: int = 32) -> None:
        if size_divisor < 1:
            raise ValueError(f"size_divisor must be >= 1, got {size_divisor}")
        self.size_divisor = int(size_divisor)

    def __call__(self, batch: list[tuple[torch.Tensor, dict]]) -> tuple[torch.Tensor, list[dict]]:
        if len(batch) == 0:
            raise ValueError("cannot collate an empty batch")
        images = [sample[0] for sample in batch]
        targets = [sample[1] for sample in batch]
        num_channels = images[0].shape[0]
        for image in images:
            if image.dim() != 3 or image.shape[0] != num_channels:
                raise ValueError(f"expected images of shape ({num_channels}, H, W), got {tuple(image.shape)}")
        padded_height, padded_width = self.padded_shape(max(image.shape[1] for image in images),
                                                        max(image.shape[2] for image in images))
        # One allocation for the whole batch, then one copy per image.
        padded = images[0].new_zeros((len(images), num_channels, padded_height, padded_width))  # (B, 3, H, W)
        for padded_image, image in zip(padded, images):
            padded_image[:, : image.shape[1], : image.shape[2]].copy_(image)
        return padded, targets

    def padded_shape(self, height: int, width: int) -> tuple[int, int]:
        """(H, W) of a batch whose largest image is ``height`` x ``width``: each side rounded up to size_divisor."""
        return (int(math.ceil(height / self.size_divisor) * self.size_divisor),
                int(math.ceil(width / self.size_divisor) * self.size_divisor))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(size_divisor={self.size_divisor})"
