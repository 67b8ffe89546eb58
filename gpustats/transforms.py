"""A dependency-free stand-in for ``torchvision.transforms.Normalize`` (used when torchvision is absent)."""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["Normalize"]


class Normalize(torch.nn.Module):
    """``(x - mean) / std`` per channel on a ``[..., C, H, W]`` float tensor, like torchvision's.

    >>> n = Normalize(mean=[0.5], std=[0.25])
    >>> n(torch.ones(1, 2, 2)).flatten().tolist()
    [2.0, 2.0, 2.0, 2.0]
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False):
        super().__init__()
        if any(s == 0 for s in std):
            raise ValueError(f"std evaluated to zero in {list(std)}, leading to division by zero")
        self.mean = list(mean)
        self.std = list(std)
        self.inplace = inplace

    def forward(self, tensor: torch.Tensor) -> torch.Tensor:
        if not tensor.is_floating_point():
            raise TypeError(f"input tensor should be a float tensor, got {tensor.dtype}")
        mean = torch.as_tensor(self.mean, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        std = torch.as_tensor(self.std, dtype=tensor.dtype, device=tensor.device).view(-1, 1, 1)
        out = tensor if self.inplace else tensor.clone()
        return out.sub_(mean).div_(std)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(mean={self.mean}, std={self.std})"
