"""The demo model's training settings, one dataclass read by `audit demo train` and by `train()`; free of torch so
that the command line can show its defaults without loading a model."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TrainOptions:
    steps: int = 3000
    batch: int = 128
    lr: float = 2e-3
    seed: int = 0
    scenes: int = 60_000  # training scenes generated up front
    twins: bool = False  # pair each scene with a copy whose one object has another shape (experiment)
    junk: int = 32  # random-token captions per step, negatives for every image
    word_templates: bool = True  # single-attribute captions also as 'a circle', 'a photo of a circle'
    shape_negatives: int = 128  # captions right about colour and background, wrong about one shape
    shape_pairs: bool = True  # beside each shape-swapped caption, the same caption with the true shape
    conv_stem: bool = True  # convolutional stem before the ViT instead of patchify
    specific: float = 1.0  # weigh fitting captions by exp(SPECIFIC x attributes they state)
    filler: int = 0  # captions of filler words only per step, negatives for every image
