"""The concept opinion (SpLiCE, Bhalla et al. 2024): an image's embedding as a sparse, non-negative sum of the
embeddings of vocabulary words. One image forward and a small solve per image, beside (or instead of) the
ascent's gradient search.

Both sides are centred before the solve, because CLIP's images and texts sit in two separate cones (the
modality gap) and only what sets one image (or word) apart from the others is worth explaining:
- texts by the mean of the normalized embeddings of the model's default vocabulary (vocabulary.text_mean), the
  same whatever vocabulary a scan uses;
- images by a mean fixed before the scan starts (--concept-mean): "dataset", the mean of the first
  MEAN_IMAGES readable images of the scanned source in the source's own order, computed once by the scan's
  first pass (audit.scanner.first_pass, whose embeddings the scan then reuses) and stored in scan.json, so that
  a resume, another batch size or another engine uses the very same vector; a file (.npy,
  one vector); or the stored mean of another scan directory (snapshots that will be compared should share one).
  "none" centres neither side.
Each centred embedding is normalized again, then each image is solved on its own (audit.scanner.sparse_solve):
nothing of one image depends on another.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from audit.errors import AuditError
from audit.scanner.sparse_solve import KKT_TOL, exact_row, nonneg_lasso
from audit.store.schema import CONCEPT

log = logging.getLogger("audit.scan")

MEAN_IMAGES = 1000
MEAN_CHUNK = 32  # images per forward while averaging: fixed, so the mean's arithmetic is too
MIN_DISTANCE = 1e-4  # from the image mean, of a normalised embedding: closer is the mean itself


@dataclass(frozen=True)
class ConceptSettings:
    l1: float
    per_image: int  # concepts stored per image (the largest weights)
    heatmaps: int  # of those, how many get a relevancy heatmap


@dataclass
class ImageMean:
    vector: np.ndarray | None  # [D] float32; None: no centring
    spec: str  # "dataset", "none", or where the vector came from
    images: int = 0  # how many images it averages (0 when read from a file)

    @property
    def sha256(self) -> str | None:
        if self.vector is None:
            return None
        return hashlib.sha256(np.ascontiguousarray(self.vector, dtype=np.float32).tobytes()).hexdigest()

    def to_json(self) -> dict:
        return {"spec": self.spec, "images": self.images, "sha256": self.sha256,
                "vector": None if self.vector is None else [float(v) for v in self.vector]}

    @classmethod
    def from_json(cls, data: dict) -> ImageMean:
        vector = data.get("vector")
        return cls(None if vector is None else np.asarray(vector, dtype=np.float32), data.get("spec", "dataset"),
                   int(data.get("images", 0)))


def read_mean(spec: str) -> ImageMean | None:
    """The mean a --concept-mean value names when it can be read before the model is loaded: None for
    "dataset" (computed from the source once the model is loaded), an empty mean for "none", else the vector of
    a .npy file or of another scan's scan.json. Every mistake is one AuditError."""
    if spec == "dataset":
        return None
    if spec == "none":
        return ImageMean(None, "none")
    path = Path(spec)
    if path.is_dir():
        from audit.store.layout import read_config

        stored = read_config(path).get("concept_mean")
        if not stored or stored.get("vector") is None:
            raise AuditError(f"--concept-mean {path}: that scan stores no image mean (it was not scanned with "
                             "--opinion concepts|both and a dataset or file mean)")
        mean = ImageMean.from_json(stored)
        return ImageMean(mean.vector, f"scan:{path.name}", mean.images)
    if not path.is_file():
        raise AuditError(f"--concept-mean {spec!r} is not dataset, none, a .npy file or a scan directory")
    try:
        vector = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise AuditError(f"--concept-mean {path}: not a NumPy .npy file ({e})") from None
    vector = np.asarray(vector, dtype=np.float32)
    if vector.ndim == 2:  # a stack of embeddings: their mean, each normalized as the scan does
        vector = (vector / np.linalg.norm(vector, axis=1, keepdims=True).clip(1e-12)).mean(0)
    if vector.ndim != 1 or not np.isfinite(vector).all():
        raise AuditError(f"--concept-mean {path}: expected one finite vector (or a stack of them), "
                         f"got shape {vector.shape}")
    return ImageMean(vector, f"file:{path.name}")


def warn_small_mean(images: int) -> None:
    if images < 16:
        log.warning(f"audit scan: the concept decomposition is centred by the mean of only {images} image(s), which "
                    "removes most of what they share; pass --concept-mean with a larger scan or a .npy mean")


class Decomposition:
    """Decomposes image embeddings over a vocabulary; built once per scanner (model, vocabulary, means)."""

    def __init__(self, words: tuple[str, ...], embeddings: torch.Tensor, text_mean: torch.Tensor,
                 image_mean: ImageMean, settings: ConceptSettings):
        self.words = words
        self.embeddings = embeddings  # [V, D] normalized
        self.settings = settings
        if image_mean.vector is None:
            self.image_mean = None
            self.atoms = embeddings
        else:
            vector = torch.as_tensor(image_mean.vector, dtype=torch.float32, device=embeddings.device)
            if vector.shape[0] != embeddings.shape[1]:
                raise AuditError(f"--concept-mean {image_mean.spec}: a {vector.shape[0]}-vector, but this model's "
                                 f"embeddings have {embeddings.shape[1]} dimensions")
            self.image_mean = vector
            self.atoms = F.normalize(embeddings - text_mean.float()[None], dim=-1)

    def centred(self, feats: torch.Tensor) -> torch.Tensor:
        x = F.normalize(feats.float(), dim=-1)
        if self.image_mean is not None:
            x = x - self.image_mean[None]
            # An image (almost) at the mean has nothing of its own to explain; normalising what is left of it,
            # rounding noise, would make a full-length vector of noise (a scan of one image is its own mean).
            norm = x.norm(dim=-1, keepdim=True)
            x = torch.where(norm > MIN_DISTANCE, x / norm.clamp(min=MIN_DISTANCE), torch.zeros_like(x))
        return x

    @torch.no_grad()
    def __call__(self, feats: torch.Tensor) -> tuple[list[list[dict]], np.ndarray]:
        """Image features [B, D] -> per image its concepts (largest weight first, at most per_image), and the
        cosine of each image's reconstruction (all its weights) with its centred embedding [B]."""
        # The solve in float32 under the scan's bfloat16 autocast, on purpose: its support and weights are what
        # the statistics count, and a bfloat16 product inside it would move near-ties.
        with torch.autocast(feats.device.type, enabled=False):
            return self._solve(feats)

    def _solve(self, feats: torch.Tensor) -> tuple[list[list[dict]], np.ndarray]:
        # The batch finds each image's support; each image is then finished alone, in shapes of its own (its
        # centring, its exact weights, its fit and its words' cosines), so its rows are the same bits in any batch.
        sol = nonneg_lasso(self.atoms, self.centred(feats), self.settings.l1)
        rows, fits = [], np.zeros(feats.shape[0], np.float32)
        for i in range(feats.shape[0]):
            x = self.centred(feats[i:i + 1])
            # The batch's slack screens the first round only where the batch reached its optimum.
            screen = sol.slack[i] if float(sol.violation[i]) <= KKT_TOL else None
            weights, atoms = exact_row(self.atoms, x[0], self.settings.l1, sol.weights[i], sol.atoms[i], screen)
            recon = (weights.double() @ self.atoms[atoms].double()).float()[None]
            fits[i] = F.cosine_similarity(recon, x, dim=-1).nan_to_num(0.0).clamp(min=0.0).item() if len(atoms) else 0
            cosine = (F.normalize(feats[i:i + 1].float(), dim=-1) * self.embeddings[atoms]).sum(-1).tolist()
            words = [(self.words[a], float(w), c) for a, w, c in zip(atoms.tolist(), weights.tolist(), cosine,
                                                                       strict=True)][: self.settings.per_image]
            rows.append([{"word": word, "kind": CONCEPT, "word_rank": r, "seq_rank": -1, "seq_text": word,
                          "seq_cosine": c, "weight": w} for r, (word, w, c) in enumerate(words)])
        return rows, fits

