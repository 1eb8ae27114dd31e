"""`audit verify`: how faithful the heatmaps are, and whether each finding is grounded in the image.

A second pass over a finished scan: it loads the scan's model, reads a sample of its images again and writes
rows into scan-dir/verification/ (part files renamed into place whole, a settings file beside them), never
touching the scan's own tables. Resumable: the images and findings already verified are skipped.

- Faithfulness (deletion and insertion; Petsiuk et al., RISE, 2018): for each sampled image, each kind of word
  and each relevancy method the model supports, the word's cosine as the image's cells are blanked in the map's
  order of relevance (deletion), and as they are revealed on a blank image (insertion), against random orders
  (the baseline, seeded by the image). A faithful map makes the cosine fall faster than a random order.
- Grounding of findings: for each flagged (group, word), on the group's images that carry the word, whether the
  cells holding the top half of the word's relevance (the scan's stored map) carry it, both ways: the fall of
  the cosine when those cells are blanked against as many cells blanked at random (are they needed?), and the
  fall when every other cell is blanked against keeping as many random cells (are they enough?). Both sides,
  because a word whose evidence is spread over the image (grass all over a background) survives the loss of any
  part of it and is only seen on the second side; a word read from one small part is only seen on the first.

A blanked cell is set to the preprocessing mean (0 after normalisation) for every method, as occlusion does.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from audit.errors import AuditError
from audit.scanner.options import VerifyOptions
from audit.sources.access import Fetched, SourceImages, decode_fetched
from audit.sources.decode import DecodeError
from audit.store.schema import PROBE, VERIFICATION, VERIFICATION_FOLDER

log = logging.getLogger("audit.verify")
GROUNDING_SIDES = ["own cells blanked vs as many random", "only own cells kept vs as many random"]
BLANK = "each blanked cell is set to the preprocessing mean (0 after normalisation), for every method alike"


# ---- the pieces, on any score ---------------------------------------------------------------------------

def blank(images: torch.Tensor, masks: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """images [B, 3, H, W] (normalised) with the cells of masks [B, gh * gw] (True: blank) set to 0."""
    gh, gw = grid
    b, _, h, w = images.shape
    cells = masks.reshape(b, 1, gh, gw).to(images.dtype)
    pixels = cells.repeat_interleave(h // gh, dim=2).repeat_interleave(w // gw, dim=3)
    return images * (1 - pixels)


def step_counts(cells: int, steps: int) -> list[int]:
    """How many cells are blanked (deletion) or shown (insertion) at each point: 0 to all, in `steps` steps."""
    return [round(k * cells / steps) for k in range(steps + 1)]


def curve_embeddings(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, orders: torch.Tensor,
                     grid: tuple[int, int], steps: int, chunk: int = 256) -> torch.Tensor:
    """The embeddings [P, 2, steps + 1, D] along the deletion (index 0) and insertion (1) curves of images
    [P, 3, H, W], each with its cell order orders [P, n] (most relevant first). `embed` maps images [M, 3, H, W]
    to [M, D]; the blanked images are made `chunk` at a time, so memory stays flat however many pairs."""
    n_rows, cells = orders.shape
    counts = step_counts(cells, steps)
    rank = torch.empty_like(orders)
    rank.scatter_(1, orders, torch.arange(cells, device=orders.device).expand(n_rows, cells))
    shown = torch.stack([rank < c for c in counts], dim=1)  # [P, steps + 1, n]: the first c cells of the order
    masks = torch.stack([shown, ~shown], dim=1).reshape(-1, cells)  # deletion blanks them, insertion the rest
    rows = torch.arange(n_rows).repeat_interleave(2 * (steps + 1))
    # Each curve starts or ends at the whole image and at the blank one (the same for every image): those are
    # encoded once, the rest `chunk` blanked images at a time.
    whole = embed(images).float()
    out = torch.empty(len(masks), whole.shape[1], device=whole.device)
    none, every = ~masks.any(1), masks.all(1)
    out[none] = whole[rows[none]]
    out[every] = embed(torch.zeros_like(images[:1])).float()
    middle = torch.nonzero(~(none | every))[:, 0]
    if len(middle):
        out[middle] = blanked_embeddings(embed, images, masks[middle], rows[middle], grid, chunk)
    return out.reshape(n_rows, 2, steps + 1, -1)


def blanked_embeddings(embed: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, masks: torch.Tensor,
                       owner: torch.Tensor, grid: tuple[int, int], chunk: int = 256) -> torch.Tensor:
    """embed(images[owner[m]] with the cells of masks[m] blanked) for every m, made `chunk` images at a time."""
    return torch.cat([embed(blank(images[owner[lo:lo + chunk].to(images.device)],
                                  masks[lo:lo + chunk].to(images.device), grid)).float()
                      for lo in range(0, len(masks), chunk)])


def curves(score: Callable[[torch.Tensor], torch.Tensor], image: torch.Tensor, orders: torch.Tensor,
           grid: tuple[int, int], steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion curves [O, steps + 1] of a score (images [M, 3, H, W] -> [M]) on one image
    [3, H, W], for cell orders [O, n]."""
    values = curve_embeddings(lambda x: score(x)[:, None], image.expand(len(orders), *image.shape), orders, grid,
                              steps)[..., 0]
    return values[:, 0], values[:, 1]


def area(curve: torch.Tensor) -> torch.Tensor:
    """Area under curves [..., K + 1] sampled evenly over the blanked (or shown) share 0 to 1 (trapezoids)."""
    k = curve.shape[-1] - 1
    return (curve.sum(-1) - (curve[..., 0] + curve[..., -1]) / 2) / k


def random_orders(cells: int, draws: int, key: str, seed: int) -> torch.Tensor:
    """draws random orders of the cells, from a generator seeded by (seed, key): the same for an image whatever
    else is verified with it."""
    digest = hashlib.sha256(f"{seed}:{key}".encode("utf-8", "surrogatepass")).digest()
    gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & (2**63 - 1))
    return torch.stack([torch.randperm(cells, generator=gen) for _ in range(draws)])


def top_half(grid: np.ndarray) -> np.ndarray:
    """The fewest cells, most relevant first, that hold at least half of a map's positive relevance (at least
    one cell), as a boolean mask over the flattened grid."""
    flat = np.clip(np.asarray(grid, dtype=np.float64).ravel(), 0, None)
    order = np.argsort(-flat, kind="stable")
    total = flat.sum()
    k = 1 if total <= 0 else int(np.searchsorted(np.cumsum(flat[order]), total / 2) + 1)
    mask = np.zeros(flat.size, dtype=bool)
    mask[order[:k]] = True
    return mask


def sample(ids: list[str], n: int, seed: int) -> list[str]:
    """A fixed sample of n image ids: those with the smallest hashes of (seed, id), so the sample depends only
    on the ids and the seed, never on the order they are listed in."""
    keyed = sorted(ids, key=lambda i: hashlib.sha256(f"{seed}:{i}".encode("utf-8", "surrogatepass")).digest())
    return sorted(keyed[:n])


# ---- the scan's side ------------------------------------------------------------------------------------

class Store:
    """scan-dir/verification: part files renamed into place whole, the settings they were made with beside."""

    def __init__(self, scan_dir: Path, settings: dict, overwrite: bool):
        from audit.store.reader import Scan

        self.scan = Scan(scan_dir)
        self.root = scan_dir / VERIFICATION_FOLDER
        path = self.root / "settings.json"
        if overwrite and self.root.exists():
            for p in self.root.iterdir():
                p.unlink()
        if path.exists():
            stored = json.loads(path.read_text(encoding="utf-8"))
            if stored != settings:
                changed = sorted(k for k in set(stored) | set(settings) if stored.get(k) != settings.get(k))
                raise AuditError(f"{self.root} was verified with other settings ({', '.join(changed)}); verify "
                                 "with the same settings, or --overwrite to verify again")
        self.root.mkdir(parents=True, exist_ok=True)
        tmp = self.root / ".tmp-settings.json"
        tmp.write_text(json.dumps(settings, indent=2, sort_keys=True), encoding="utf-8")
        os.replace(tmp, path)
        self.parts = len(list(self.root.glob("part-*.parquet")))

    def table(self) -> pa.Table:
        return self.scan.verification_table()

    def done(self, part: str, *key: str) -> set:
        """What a part already holds: its image ids, or tuples of (key columns..., image_id)."""
        table = self.table()
        mine = [i for i, p in enumerate(table["part"].to_pylist()) if p == part]
        columns = [table[c].to_pylist() for c in (*key, "image_id")]
        return {columns[0][i] if not key else tuple(c[i] for c in columns) for i in mine}

    def write(self, rows: list[dict]) -> None:
        if not rows:
            return
        table = pa.Table.from_pylist(rows, schema=VERIFICATION)
        name = f"part-{self.parts:05d}.parquet"
        tmp = self.root / f".tmp-{name}"
        pq.write_table(table, tmp)
        os.replace(tmp, self.root / name)
        self.parts += 1


def unit_embedder(towers) -> Callable[[torch.Tensor], torch.Tensor]:
    """images [M, 3, H, W] -> their unit image embeddings [M, D]."""
    def embed(images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return F.normalize(towers.encode_images(images.to(towers.device)).float(), dim=-1)
    return embed


def unit_texts(towers, words: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return F.normalize(towers.encode_ids(*towers.tokenize(words))[0].float(), dim=-1)


def scan_model(scan, pretrained: str | None, device: str):
    """The scan's model with its weights: `pretrained` as given, else what the scan recorded (a tag, random
    weights from its seed, or the bundled file); a file whose hash differs from the scan's is refused."""
    from audit.scanner.models import load_model
    from audit.scanner.profiles import profile

    settings = scan.settings
    model, identity = settings["model"], settings.get("pretrained", "auto")
    if pretrained is None:
        if identity.startswith("file:"):
            if profile(model).bundled_weights is None or Path(identity[5:]).name != profile(model).bundled_weights.name:
                raise AuditError(f"the scan was made with the weights file {identity[5:]}; pass its path with "
                                 "--pretrained")
            pretrained = "auto"
        else:
            pretrained = identity
    loaded = load_model(model, pretrained, device=device, seed=int(settings.get("seed", 0)))
    want = settings.get("weights_sha256")
    if want and loaded.weights_sha256 and loaded.weights_sha256 != want:
        raise AuditError(f"--pretrained {pretrained} is not the file the scan was made with (its sha256 differs)")
    return loaded


def _scan_options(settings: dict):
    """The scan's relevancy options as its settings recorded them, its model's defaults filled in."""
    from audit.scanner.options import ScanOptions

    keep = {"heatmap", "start_layer", "start_layer_text", "occlusion_window", "legrad_layers"}
    return ScanOptions(model=settings["model"], **{k: v for k, v in settings.items() if k in keep}).with_model_defaults()


def method_params(settings: dict) -> dict[str, dict]:
    """Each relevancy method's parameters as the scan's settings (its model's defaults filled in) set them."""
    from audit.scanner.relevancy import METHODS, method_options

    opts = _scan_options(settings)
    return {method: method_options(method, opts) for method in METHODS}


def _pixels(fetched: Fetched, preprocess: dict):
    from audit.scanner.loader import to_model_input

    d = decode_fetched(fetched, preprocess)
    mean = np.asarray(preprocess["mean"], dtype=np.float32)
    std = np.asarray(preprocess["std"], dtype=np.float32)
    return to_model_input(d.pixels, mean, std), d.frame


def method_curves(towers, images: torch.Tensor, pair_image: torch.Tensor, words: list[str], params: dict[str, dict],
                  keys: list[str], opts: VerifyOptions) -> dict[str, torch.Tensor]:
    """Each pair's (images[pair_image[p]], words[p]) deletion and insertion cosines [P, 2, steps + 1], per relevancy
    method (its parameters in `params`) and for "random": the mean over random orders of each image (seeded by
    its key in `keys`), shared by all its words."""
    from audit.scanner.relevancy import relevancy

    images = images.to(towers.device)
    grid = towers.grid_size
    embed = unit_embedder(towers)
    texts = unit_texts(towers, words)
    on_device = pair_image.to(images.device)
    out = {}
    for method, kw in params.items():
        maps = relevancy(towers, images, pair_image, words, method, **kw).image.flatten(1)
        orders = torch.argsort(maps, dim=1, descending=True, stable=True)
        emb = curve_embeddings(embed, images[on_device], orders, grid, opts.steps)
        out[method] = (emb * texts[:, None, None, :].to(emb.device)).sum(-1).cpu()
    # The baseline: random orders of each image, whatever its words, scored against each of them.
    randoms = torch.cat([random_orders(grid[0] * grid[1], opts.random_orders, k, opts.seed) for k in keys])
    owner = torch.arange(len(keys)).repeat_interleave(opts.random_orders)
    emb = curve_embeddings(embed, images[owner.to(images.device)], randoms, grid, opts.steps)
    emb = emb.reshape(len(keys), opts.random_orders, *emb.shape[1:])[on_device.to(emb.device)]
    out["random"] = (emb * texts[:, None, None, None, :].to(emb.device)).sum(-1).mean(1).cpu()
    return out


IMAGES_PER_BATCH = 8  # images verified together: their pairs share the relevancy calls and the encodes


def faithfulness(scan_dir, towers, preprocess: dict, store: Store, opts: VerifyOptions, words, progress) -> int:
    """Deletion and insertion rows for the sampled images not yet verified, IMAGES_PER_BATCH images at a time;
    returns how many were done now. An image's words are the first words_per_kind of each kind that the
    statistics count (`words`, the report's filter; every probe)."""
    from audit.store.query import ScanQuery

    q = ScanQuery.open(scan_dir)
    params = method_params(q.scan.settings)
    done = store.done("faithfulness")
    images = q.scan.images().set_index("image_id")
    todo = [i for i in sample(list(images.index), opts.faithfulness_images, opts.seed) if i not in done]
    tokens = q.judged(words, todo)
    tokens = tokens[tokens.filtered.isna() | (tokens.kind == PROBE)].sort_values(["image_id", "kind", "word_rank"])
    tokens = tokens.groupby(["image_id", "kind"]).head(opts.words_per_kind)
    fetched = SourceImages(q.scan.config.get("source")).stream((i, images.at[i, "path"]) for i in todo)
    for _ in range(0, len(todo), IMAGES_PER_BATCH):
        batch, pixels = [], []
        for image_id, image in itertools.islice(fetched, IMAGES_PER_BATCH):
            try:
                pixels.append(_pixels(image, preprocess)[0])
                batch.append(image_id)
            except (DecodeError, OSError) as e:  # moved or changed since the scan: skipped, said once
                log.warning(f"audit verify: cannot read {images.at[image_id, 'path']}: {e}")
        pairs = tokens[tokens.image_id.isin(batch)]
        rows = [{"part": "faithfulness", "image_id": i, "kind": "", "word": ""}  # verified, no words to show
                for i in batch if i not in set(pairs.image_id)]
        if len(pairs):
            position = {image_id: k for k, image_id in enumerate(batch)}
            pair_image = torch.tensor([position[i] for i in pairs.image_id])
            found = method_curves(towers, torch.stack(pixels), pair_image, list(pairs.word), params, batch, opts)
            rows += [_faith_row(w, method, cos[j, 0], cos[j, 1])
                     for method, cos in found.items() for j, w in enumerate(pairs.itertuples())]
        store.write(rows)
        progress(len(batch))
    return len(todo)


def _faith_row(w, method: str, deletion: torch.Tensor, insertion: torch.Tensor) -> dict:
    return {"part": "faithfulness", "image_id": w.image_id, "kind": w.kind, "word": w.word, "method": method,
            "deletion": float(area(deletion)), "insertion": float(area(insertion)),
            "deletion_curve": deletion.tolist(), "insertion_curve": insertion.tolist()}


def grounding(scan_dir, towers, preprocess: dict, store: Store, opts: VerifyOptions, words,
              findings: list[tuple[str, str, str, str]], progress, copy_members=None) -> int:
    """Grounding rows for the images of each finding (column, kind, group, word) not yet verified: the group's
    images with the word that `words` counts, highest cosine first; returns how many (finding, image) pairs were
    done now."""
    from audit.store.query import ScanQuery

    q = ScanQuery.open(scan_dir, copy_members)
    done = store.done("grounding", "column", "kind", "grp", "word")
    images = q.scan.images().set_index("image_id")
    grid = towers.grid_size
    cells = grid[0] * grid[1]
    method = scan_method(q.scan)
    count = 0
    # Every finding's examples first, so that the source is read once for them all (a shard streamed once).
    wanted = [(finding, q.examples(finding[0], finding[2], finding[3], opts.grounding_images, kind=finding[1],
                                   words=words)) for finding in findings]
    fetched = SourceImages(q.scan.config.get("source")).fetch(
        (ex.image_id, ex.path) for finding, examples in wanted for ex in examples.itertuples()
        if (*finding, ex.image_id) not in done)
    for (column, kind, grp, word), examples in wanted:
        text = unit_texts(towers, [word])[0]
        todo, pixels, frames = [], [], []
        for ex in examples.itertuples():
            if (column, kind, grp, word, ex.image_id) in done:
                continue
            try:
                pixel, frame = _pixels(fetched[ex.image_id], preprocess)
            except (DecodeError, OSError) as e:  # moved or changed since the scan: skipped, said once
                log.warning(f"audit verify: cannot read {ex.path}: {e}")
                continue
            todo.append(ex)
            pixels.append(pixel)
            frames.append(frame)
        if not todo:
            continue
        # Every image's blankings of this finding in one batch: none, its own cells, the rest, the random
        # draws, their complements (as many random cells kept), and (with a box) the box's cells and the others.
        masks, owner, spans = [], [], []
        for i, (ex, frame) in enumerate(zip(todo, frames, strict=True)):
            own = torch.from_numpy(top_half(np.asarray(ex.grid, dtype=np.float32)))
            draws = random_orders(cells, opts.random_draws, f"{ex.image_id}\0{word}", opts.seed)
            randoms = torch.zeros(opts.random_draws, cells, dtype=torch.bool)
            randoms.scatter_(1, draws[:, :int(own.sum())], True)
            mine = [torch.zeros(cells, dtype=torch.bool), own, ~own, *randoms, *~randoms]
            inside = box_cells(images.loc[ex.image_id], frame, grid)
            if inside is not None:
                mine += [inside, ~inside]
            spans.append((len(masks), len(mine), inside is not None, int(own.sum())))
            masks += mine
            owner += [i] * len(mine)
        emb = blanked_embeddings(unit_embedder(towers), torch.stack(pixels), torch.stack(masks),
                                 torch.tensor(owner), grid)
        cos = (emb @ text.to(emb.device)).cpu()
        rows = []
        for ex, (start, n, has_box, k) in zip(todo, spans, strict=True):
            c = cos[start:start + n]
            full = float(c[0])
            draws = opts.random_draws
            rows.append({"part": "grounding", "image_id": ex.image_id, "kind": kind, "word": word,
                         "method": method, "column": column, "grp": grp, "cells": k, "cosine": full,
                         "drop_own": full - float(c[1]), "drop_complement": full - float(c[2]),
                         "drop_random": full - float(c[3:3 + draws].mean()),
                         "drop_keep_random": full - float(c[3 + draws:3 + 2 * draws].mean()),
                         "drop_box": full - float(c[-2]) if has_box else None,
                         "drop_outside_box": full - float(c[-1]) if has_box else None})
        progress(len(rows))
        store.write(rows)
        count += len(rows)
    return count


def box_cells(image, frame, grid: tuple[int, int]) -> torch.Tensor | None:
    """The cells mostly (half or more) inside an image's object box, as a mask; None without a box, or when the
    box covers no cell or every cell (nothing to compare)."""
    from audit.scanner.heatmap_stats import cell_box_overlap
    from audit.sources.decode import box_in_frame

    box = box_in_frame(tuple(float(image[c]) for c in ("x0", "y0", "x1", "y1")), frame)  # NaN without a box
    if np.isnan(box).any():
        return None
    cover = cell_box_overlap(grid[0], grid[1], np.array([box]))[0].ravel() >= 0.5
    return torch.from_numpy(cover) if cover.any() and not cover.all() else None


def scan_method(scan) -> str:
    return _scan_options(scan.settings).heatmap


def run_verify(scan_dir: str | os.PathLike, opts: VerifyOptions, words, findings: list[tuple[str, str, str, str]],
               tested_with: dict, *, pretrained: str | None = None, device: str = "auto", overwrite: bool = False,
               quiet: bool = False, copy_members=None) -> Path:
    """Verify a scan (see the module's docstring); returns the verification folder. `words` is the statistics'
    word filter (a store.query.WordFilter), `findings` the (column, kind, group, word) to ground and
    `tested_with` the settings they were found with (min_count, fdr, copies), recorded with the rows;
    `copy_members` (analysis.duplicates.members_table) picks each finding's images as the statistics counted them,
    one per cluster of copies."""
    from audit.scanner.encoders import Towers
    from audit.scanner.progress import Progress
    from audit.store.reader import Scan

    scan = Scan(scan_dir)
    settings = {**opts.settings(), **tested_with, "blank": BLANK, "grounding_sides": GROUNDING_SIDES, "stop_words": sorted(words.stop_words),
                "min_relative_cosine": words.min_relative_cosine}
    loaded = scan_model(scan, pretrained, device)
    towers = Towers(loaded)
    store = Store(Path(scan_dir), settings, overwrite)
    if opts.faithfulness_images:
        bar = Progress(min(opts.faithfulness_images, len(scan.images())), "faithfulness", quiet)
        bar.update(len(store.done("faithfulness")))
        n = faithfulness(scan_dir, towers, loaded.preprocess, store, opts, words, bar.update)
        bar.close()
        log.info(f"audit verify: faithfulness of {n} image(s) measured now")
    if opts.group_by:
        n = grounding(scan_dir, towers, loaded.preprocess, store, opts, words, findings, lambda k: None,
                      copy_members)
        log.info(f"audit verify: grounding of {n} (finding, image) pair(s) measured now")
    return store.root
