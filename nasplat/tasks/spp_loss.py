"""SPPLoss, the scale pyramid pooling loss of NAS-Count (Hu et al., ECCV 2020), as a density-map loss.

Plain pixel MSE treats every pixel on its own ("pixel-level isolation"): a density blob one pixel off and
one a whole image away cost the same. SPPLoss adds the MSE of the maps pooled over coarser and coarser
grids, so it compares counts at several scales: the whole image, its quarters, its sixteenths, ...

The paper's pyramid (levels, pooling type, normalisation) is not public (see research/methods.md, 6.2);
this one sum-pools to g x g grids and divides each level's squared error by its cells' area. With that
normalisation, independent per-pixel noise costs the same at every level, while an error that persists over
a region, a wrong count there, costs more the larger the region it spans.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserError

LEVELS = (1, 2, 4)  # grid sides of the pooled levels; the full-resolution map is always level 0


class SPPLoss(nn.Module):
    """Pixel MSE plus, per grid side g in `levels`, the mean over the g x g cells of (cell count error)^2
    divided by the cell area; levels as fine as the map itself or finer are left out (they would repeat
    the pixel term). `levels=()` is plain MSE."""

    def __init__(self, *, levels: Sequence[int] = LEVELS):
        super().__init__()
        if any(isinstance(g, bool) or not isinstance(g, int) or g < 1 for g in levels):
            raise UserError(f"SPPLoss levels must be grid sides >= 1 (e.g. 1, 2, 4); got {tuple(levels)!r}")
        self.levels = tuple(sorted(set(levels)))

    def terms(self, prediction: torch.Tensor, target: torch.Tensor) -> dict[int, torch.Tensor]:
        """The loss per level, keyed by grid side (0: the full-resolution pixel MSE); they sum to the loss."""
        if prediction.shape != target.shape:
            raise ValueError(f"SPPLoss compares maps of one shape; got {tuple(prediction.shape)} and "
                             f"{tuple(target.shape)}")
        error = prediction - target
        height, width = error.shape[-2:]
        terms = {0: error.pow(2).mean()}
        for g in self.levels:
            if g >= min(height, width):
                continue
            area = height * width / (g * g)
            # the mean error of a cell times its area is the cell's count error; squared and over the area:
            terms[g] = F.adaptive_avg_pool2d(error, g).pow(2).mean() * area
        return terms

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.stack(list(self.terms(prediction, target).values())).sum()
