"""What every relevancy method returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class Relevancy:
    image: torch.Tensor  # [P, grid_h, grid_w] float32, cpu
    text: list[torch.Tensor]  # per pair: relevance of the tokens between SOT and EOT, float32, cpu
    cosine: torch.Tensor  # [P] cosine(image, word), float32, cpu


@dataclass(frozen=True)
class Params:
    """The settings of every method; each reads its own. Stored in a scan's settings, so they name rows."""
    start_layer: int = -1  # chefer: first image layer (-1 = last)
    start_layer_text: int = -1  # chefer: first text layer
    window: int = 3  # occlusion: side of the blanked window, in patches
