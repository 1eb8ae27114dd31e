"""An embedding drift said in words: the vocabulary entries whose zero-shot scores follow the drift's witness.

The MMD test (analysis.embedding_drift) compares two samples through a Gaussian kernel k(a, b) = exp(-|a - b|² /
w²). Its witness function, f(z) = mean_j k(z, new_j) - mean_i k(z, old_i), is positive where the new snapshot
has more images than the old and negative where it has fewer (Gretton et al., 2012, section 2.3).

The witness is evaluated at the pooled images themselves (each image's own term left out), where the kernel
estimate rests on neighbours, not at the words' text embeddings: text and image embeddings sit apart in CLIP's
space (the modality gap), and at the test's narrower widths a kernel at a text point sees only its single nearest
image, so a ranking there follows noise. Each entry is then scored
by the Pearson correlation, over the pooled images, between the witness and the entry's zero-shot cosine with
each image: near +1 when the images that score high on the word are the ones the new snapshot added, near -1
when they are the ones it lost. It is Domino's describe (a text embedding against a difference of image means)
with the kernel's witness as the weights, and it uses the width the test found most telling, so the words describe
the shift the test saw. The correlations mean nothing when the test sees no drift: callers say them only then.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TOP = 5
_CHUNK = 4096  # vocabulary entries per block: a [chunk, m + n] matrix at a time


@dataclass(frozen=True)
class DriftWords:
    arrived: list[tuple[str, float]]  # (entry, r with the witness), highest first: what the new images are more like
    left: list[tuple[str, float]]  # lowest first: what they are less like

    def said(self, top: int = TOP) -> str:
        """"more like 'snow' (r=0.81), 'white' (r=0.64); less like 'grass' (r=-0.52)", the same in every output."""
        more = ", ".join(f"'{w}' (r={s:.2f})" for w, s in self.arrived[:top])
        less = ", ".join(f"'{w}' (r={s:.2f})" for w, s in self.left[:top])
        return f"more like {more or 'nothing'}; less like {less or 'nothing'}"


def witness(old: np.ndarray, new: np.ndarray, width: float) -> np.ndarray:
    """The witness at each pooled image [m + n] (old first), each image's kernel with itself left out."""
    z = np.concatenate([old, new])
    m, n = len(old), len(new)
    sq = (z * z).sum(1)
    kernel = np.exp(-np.maximum(sq[:, None] + sq[None, :] - 2 * z @ z.T, 0) / max(width, 1e-6) ** 2)
    np.fill_diagonal(kernel, 0.0)
    own_new = np.r_[np.zeros(m), np.ones(n)]
    return kernel[:, m:].sum(1) / (n - own_new) - kernel[:, :m].sum(1) / (m - (1 - own_new))


def correlations(old: np.ndarray, new: np.ndarray, text: np.ndarray, width: float) -> np.ndarray:
    """Per text embedding [V, D]: Pearson's r between the witness and its cosine with each pooled image."""
    f = witness(old, new, width)
    f = f - f.mean()
    pooled = np.concatenate([old, new])
    out = np.empty(len(text))
    for start in range(0, len(text), _CHUNK):
        t = text[start:start + _CHUNK].astype(np.float64)
        t = t / np.linalg.norm(t, axis=1, keepdims=True).clip(1e-12)
        c = t @ pooled.T
        c -= c.mean(1, keepdims=True)
        out[start:start + _CHUNK] = (c @ f) / (np.linalg.norm(c, axis=1) * np.linalg.norm(f)).clip(1e-12)
    return out


def drift_words(old: np.ndarray, new: np.ndarray, words: list[str], text: np.ndarray, width: float,
                top: int = TOP) -> DriftWords:
    """The `top` entries that follow the witness most (the new images are more like them) and least, between the
    unit samples old [m, D] and new [n, D] (each at least 2 images)."""
    score = correlations(old, new, text, width)
    order = np.argsort(-score, kind="stable")
    arrived = [(words[i], float(score[i])) for i in order[:top] if score[i] > 0]
    left = [(words[i], float(score[i])) for i in order[::-1][:top] if score[i] < 0]
    return DriftWords(arrived, left)
