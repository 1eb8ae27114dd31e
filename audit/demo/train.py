"""Train audit-demo: a small CLIP (open_clip config audit-demo) on procedural scenes, on a CPU.

    audit demo train --out audit/demo/weights/audit-demo.safetensors --seed 0
    (or python -m audit demo train ...; defaults: the bundled v2's recipe, see its model card)

Captions are built from each scene's attributes: full captions from several templates, partial ones (one
colour, one shape, a background, a colour-shape pair), some with random vocabulary tokens inserted so that
noise tokens cannot win the ascent. A caption is a positive for every image in the batch it truly
describes (multi-positive contrastive loss), so "red" is not pushed away from a second red image.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import open_clip
import torch
import torch.nn.functional as F

from audit.demo.recipe import TrainOptions
from audit.demo.scenes import BACKGROUNDS, COLOURS, SHAPES, captions, make_scene
from audit.scanner.encoders import Towers
from audit.scanner.models import build_model

log = logging.getLogger("audit.demo.train")
TRAIN_SEED_BASE = 1_000_000  # training scenes use seeds from here; evaluation uses EVAL_SEED_BASE
EVAL_SEED_BASE = 900_000_000
_C = list(COLOURS)
_S = list(SHAPES)
_B = list(BACKGROUNDS)
N_ATTR = len(_C) + len(_S) + len(_C) * len(_S) + len(_B)


def _colour(c):
    return _C.index(c)


def _shape(s):
    return len(_C) + _S.index(s)


def _pair(c, s):
    return len(_C) + len(_S) + _C.index(c) * len(_S) + _S.index(s)


def _bg(b):
    return len(_C) + len(_S) + len(_C) * len(_S) + _B.index(b)


def build_scenes(n: int, seed: int, size: int = 64, twins: bool = False):
    """Pixels [n, 3, size, size] uint8 and per-scene metadata (for captions).

    With `twins`, also a second set: each scene again with one object's shape changed to a shape not in the
    scene, everything else identical. A batch holding both can only be sorted out by shape, which the
    model otherwise learns last (colour and background already separate most captions of a batch).
    """
    def one(scene):
        return np.asarray(scene.image), (scene.background, [(o.colour, o.shape) for o in scene.objects],
                                         captions(scene))

    sets = 2 if twins else 1
    pixels = np.empty((sets, n, size, size, 3), dtype=np.uint8)
    meta: list[list] = [[] for _ in range(sets)]
    for i in range(n):
        scene_seed = TRAIN_SEED_BASE + seed * 10_000_000 + i
        s = make_scene(scene_seed, size=size)
        pixels[0, i], m = one(s)
        meta[0].append(m)
        if twins:
            rs = np.random.RandomState(scene_seed % 2**32)
            shapes = [o.shape for o in s.objects]
            j = rs.randint(len(shapes))
            shapes[j] = _other_shape(shapes, rs)
            pixels[1, i], m = one(make_scene(scene_seed, size=size, shapes=shapes))
            meta[1].append(m)
    return torch.from_numpy(pixels).permute(0, 1, 4, 2, 3).contiguous(), meta


def _other_shape(present: list[str], rs: np.random.RandomState) -> str:
    """A shape not in the scene, for a minimal-pair image or a caption wrong about one shape."""
    other = [x for x in _S if x not in present]
    return other[rs.randint(len(other))]


_COLOUR_ALONE = ("{}", "{}", "a {} thing", "something {}")
# The captions' words that name nothing ("a red thing", "a photo of a circle", "grass with a red circle").
FILLER = ("a", "thing", "something", "on", "with", "photo", "of", "and", "in", "the")
_SHAPE_ALONE = ("{}", "{}", "a {}", "a photo of a {}")


class CaptionSampler:
    def __init__(self, tokenizer, context_length: int, rs: np.random.RandomState, templates: bool = False):
        self.templates = templates  # single attributes also as "a circle", "a photo of a circle", ...
        self.tok = tokenizer
        self.ctx = context_length
        self.rs = rs
        self.cache: dict[str, list[int]] = {}

    def ids(self, text: str) -> list[int]:
        if text not in self.cache:
            self.cache[text] = self.tok.encode(text)
        return self.cache[text]

    def sample(self, meta) -> tuple[list[int], np.ndarray]:
        bg, objs, full = meta
        rs = self.rs
        req = np.zeros(N_ATTR, dtype=np.float32)
        kind = rs.rand()
        if kind < 0.55:
            text = full[rs.randint(len(full))]
            req = _attrs(meta)  # a full caption states every attribute of the scene
        else:
            c, s = objs[rs.randint(len(objs))]
            part = rs.randint(6)
            if part == 0:
                text = _COLOUR_ALONE[rs.randint(len(_COLOUR_ALONE))].format(c) if self.templates else c
                req[_colour(c)] = 1
            elif part == 1:
                text = _SHAPE_ALONE[rs.randint(len(_SHAPE_ALONE))].format(s) if self.templates else s
                req[_shape(s)] = 1
            elif part == 2:
                text, req[_bg(bg)] = bg, 1
            elif part == 3:
                text = f"a {c} {s}"
                req[[_colour(c), _shape(s), _pair(c, s)]] = 1
            elif part == 4:
                text = f"a {s} on {bg}"
                req[[_shape(s), _bg(bg)]] = 1
            else:
                text = f"a {c} thing on {bg}"
                req[[_colour(c), _bg(bg)]] = 1
        ids = list(self.ids(text))
        if rs.rand() < 0.3:  # distractor tokens: the model must learn to ignore arbitrary vocabulary
            for _ in range(rs.randint(1, 3)):
                ids.insert(rs.randint(len(ids) + 1), int(rs.randint(1, 49406)))
        return ids[: self.ctx - 2], req

    def shape_swap(self, meta, with_truth: bool = False) -> list[tuple[list[int], np.ndarray]]:
        """A caption right about the scene's colour and background but wrong about one shape. Colour and
        background alone tell most captions of a batch apart, so without such captions the loss barely
        rewards an image tower for seeing shapes.

        `with_truth` adds the same caption with the object's true shape ("a red circle on sand" beside "a red
        star on sand"): in a two-object scene only this pair asks which shape the red object has, rather than
        which shapes the scene holds."""
        bg, objs, _ = meta
        c, s = objs[self.rs.randint(len(objs))]
        s2 = _other_shape([o for _, o in objs], self.rs)
        return [self._object_caption(c, x, bg) for x in ((s2, s) if with_truth else (s2,))]

    def _object_caption(self, c: str, s: str, bg: str) -> tuple[list[int], np.ndarray]:
        req = np.zeros(N_ATTR, dtype=np.float32)
        req[[_colour(c), _shape(s), _pair(c, s), _bg(bg)]] = 1
        return list(self.ids(f"a {c} {s} on {bg}"))[: self.ctx - 2], req

    def filler(self, n: int) -> list[list[int]]:
        """Captions of 1-4 filler words ("thing on a"), negatives for every image: positives say "a red thing",
        so without them "thing" sits close to every object and the ascent writes it where the colour belongs."""
        return [[t for _ in range(self.rs.randint(1, 5)) for t in self.ids(FILLER[self.rs.randint(len(FILLER))])]
                for _ in range(n)]

    def junk(self, n: int, banned: set[int]) -> list[list[int]]:
        """Captions of 1-4 random vocabulary tokens that name nothing in any scene: negatives for every
        image, so that an arbitrary token cannot sit close to all images and win the ascent."""
        out = []
        for _ in range(n):
            ids = []
            while len(ids) < self.rs.randint(1, 5):
                t = int(self.rs.randint(1, 49406))
                if t not in banned:
                    ids.append(t)
            out.append(ids)
        return out


def multi_positive_loss(img: torch.Tensor, txt: torch.Tensor, scale: torch.Tensor, match: torch.Tensor,
                        prefer: torch.Tensor | None = None):
    """Contrastive loss where caption j is a positive for every image it fits (match[i, j] = 1). Texts
    beyond match's columns are negatives for every image and take no part in the text-to-image direction.

    `prefer` [n] weighs caption j's share of an image's image-to-text target. Equal shares let "triangle
    snow" score as high as "yellow triangle snow" and the ascent then stops at two of three attributes;
    weights rising with the attributes a caption states make the whole description score highest."""
    logits = scale * img @ txt.T
    n = match.shape[1]
    weighted = match if prefer is None else match * prefer[None, :]
    full = torch.cat([weighted, match.new_zeros(match.shape[0], logits.shape[1] - n)], 1)
    t_i2t = full / full.sum(1, keepdim=True)
    fits = match.sum(0) > 0  # a caption that fits no image of the batch is only a negative
    pos = match.T[fits]
    t_t2i = pos / pos.sum(1, keepdim=True)
    loss_i = -(t_i2t * F.log_softmax(logits, 1)).sum(1).mean()
    loss_t = -(t_t2i * F.log_softmax(logits[:, :n].T[fits], 1)).sum(1).mean()
    return (loss_i + loss_t) / 2


def train(out: Path, options: TrainOptions | None = None, *, log_every: int = 50, **overrides) -> dict:
    """Train audit-demo with `options` (TrainOptions; keyword overrides on top) and write fp16 weights to `out`
    with the settings beside them (`out` with suffix .json). Returns those settings and the minutes it took."""
    unknown = set(overrides) - {f.name for f in dataclasses.fields(TrainOptions)}
    if unknown:
        raise TypeError(f"unknown training options: {', '.join(sorted(unknown))}")
    opts = dataclasses.replace(options or TrainOptions(), **overrides)
    steps, batch, lr, seed, scenes = opts.steps, opts.batch, opts.lr, opts.seed, opts.scenes
    twins, junk, word_templates, shape_negatives = opts.twins, opts.junk, opts.word_templates, opts.shape_negatives
    conv_stem, shape_pairs, specific, filler = opts.conv_stem, opts.shape_pairs, opts.specific, opts.filler
    torch.manual_seed(seed)
    rs = np.random.RandomState(seed)
    model = build_model("audit-demo", conv_stem=conv_stem)
    tok = open_clip.get_tokenizer("audit-demo")
    pre = open_clip.get_model_preprocess_cfg(model)
    mean = torch.tensor(pre["mean"]).view(1, 3, 1, 1)
    std = torch.tensor(pre["std"]).view(1, 3, 1, 1)
    ctx = model.context_length
    towers = Towers(SimpleNamespace(model=model, tokenizer=tok, device=torch.device("cpu")))
    t0 = time.perf_counter()
    pixels, meta = build_scenes(scenes, seed, twins=twins)
    log.info(f"built {scenes} training scenes{' and their twins' if twins else ''} in "
          f"{time.perf_counter() - t0:.0f} s")
    sampler = CaptionSampler(tok, ctx, rs, word_templates)
    banned = {t for w in (*_C, *_S, *_B) for t in tok.encode(w)}
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name or "logit_scale" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = min(300, steps // 10)

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    from audit.scanner.ascent import AscentConfig, augment

    aug = AscentConfig(views=1)
    model.train()
    start = time.perf_counter()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        if twins:  # half the batch, then the same scenes' twins
            base = rs.randint(0, scenes, batch // 2)
            sel = [(0, int(i)) for i in base] + [(1, int(i)) for i in base]
        else:
            sel = [(0, int(i)) for i in rs.randint(0, scenes, batch)]
        sets, idx = (torch.tensor(v) for v in zip(*sel, strict=True))
        metas = [meta[k][i] for k, i in sel]
        x = (pixels[sets, idx].float() / 255.0 - mean) / std
        keep = torch.from_numpy(rs.rand(len(sel)) < 0.5)
        warped = augment(x, torch.from_numpy(rs.randint(0, 2**31 - 1, len(sel))), step, aug)
        x = torch.where(keep[:, None, None, None], x, warped)
        rows, reqs = zip(*(sampler.sample(m) for m in metas), strict=True)
        if shape_negatives:
            swaps = [c for m in metas[:shape_negatives] for c in sampler.shape_swap(m, shape_pairs)]
            rows, reqs = rows + tuple(r for r, _ in swaps), reqs + tuple(q for _, q in swaps)
        negatives = sampler.junk(junk, banned) + sampler.filler(filler)
        text, eot = towers.pack(list(rows) + negatives)  # captions at their own length
        img_attr = torch.from_numpy(np.stack([_attrs(m) for m in metas]))
        req = torch.from_numpy(np.stack(reqs))
        match = ((1 - img_attr) @ req.T == 0).float()  # caption j fits image i
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(towers.encode_ids(text, eot)[0], dim=-1)
        prefer = torch.exp(specific * req.sum(1)) if specific else None
        loss = multi_positive_loss(img, txt, model.logit_scale.exp().clamp(max=100), match, prefer)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            el = time.perf_counter() - start
            log.info(f"step {step}/{steps} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                  f"{el / (step + 1):.2f} s/step elapsed {el / 60:.1f} min")
    model.eval()
    minutes = (time.perf_counter() - t0) / 60
    save_weights(model, out)
    info = {**dataclasses.asdict(opts), "minutes": round(minutes, 1), "threads": torch.get_num_threads()}
    out.with_suffix(".json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _attrs(meta) -> np.ndarray:
    bg, objs, _ = meta
    a = np.zeros(N_ATTR, dtype=np.float32)
    for c, s in objs:
        a[[_colour(c), _shape(s), _pair(c, s)]] = 1
    a[_bg(bg)] = 1
    return a


def save_weights(model: torch.nn.Module, out: Path) -> None:
    from safetensors.torch import save_file

    out.parent.mkdir(parents=True, exist_ok=True)
    # Integer buffers (batch norm's step counter) keep their type.
    state = {k: (v.detach().to(torch.float16) if v.is_floating_point() else v.detach()).contiguous()
             for k, v in model.state_dict().items()}
    tmp = out.with_name(f".tmp-{out.name}")
    save_file(state, str(tmp))
    tmp.replace(out)
