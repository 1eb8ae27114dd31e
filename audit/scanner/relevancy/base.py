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
