"""Every scan option and its default, in one place: the command line, the Python API and the scan itself read
them from here. Free of torch, so that `audit --help` and the read-only commands start fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from audit.errors import AuditError
from audit.scanner.opinions import OPINIONS, parse_opinions
from audit.scanner.profiles import profile
from audit.scanner.relevancy import METHODS
from audit.sources import SOURCE_KINDS

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "auto"
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own decompression-bomb limit
DEVICES = ("auto", "cpu", "cuda")  # and cuda:N
ENGINES = ("local", "ray")
PRECISIONS = ("auto", "float32", "bfloat16")  # --precision (device.resolve_precision); a setting, like the kernel
KERNELS = ("auto", "eager", "compile", "triton")  # the ascent step's implementations (ascent.resolve_kernel)
# ScanOptions fields that never change what a stored row says: where and how fast the scan runs, what it prints,
# how the source is read (recorded in scan.json's "source"), and which files are refused as too large (error rows,
# re-tried with --retry-errors). Every other field is a setting: recorded in scan.json, compared on resume, and
# named by `audit check --baseline` and `audit diff` when two scans differ in it (tests/test_settings.py).
# --embeddings is one too: it decides whether (and at which precision) each image's embedding is kept for
# `audit ask`, and no other row; a resume with another value keeps both kinds of parts, read back as float32.
RUN_OPTIONS = ("device", "batch_size", "workers", "engine", "ray_address", "retry_errors", "quiet", "overwrite",
               "max_pixels", "source_kind", "path_column", "image_column", "id_column", "split", "embeddings",
               "commit_every")
EMBEDDINGS = ("float16", "float32", "none")  # --embeddings: float16 halves the storage, within 1e-3 of float32
# Settings of every scan, whatever its opinions; each opinion adds its own (audit.scanner.opinions).
SHARED_SETTINGS = ("model", "pretrained", "seed", "start_layer", "start_layer_text", "heatmap", "occlusion_window",
                   "legrad_layers", "opinion", "no_ascent", "precision")


@dataclass(frozen=True)
class ScanOptions:
    model: str = DEFAULT_MODEL
    pretrained: str = DEFAULT_PRETRAINED
    device: str = "auto"
    batch_size: int | str = "auto"
    workers: int = 2
    seed: int = 0
    steps: int = 200
    tokens_per_seq: int = 4
    candidates: int = 16
    lr: float = 5.0
    views: int = 64
    resample_views: bool = False
    refine_rounds: int = 3
    refine_top: int = 64
    # Token swaps only to real whole words (vocabulary.word_tokens): swaps to word pieces fuse with the next word
    # ("typho" + "grass" decodes as "typhograss") and steal its images from the statistics (bench/word_quality.py).
    refine_words: bool = True
    prompt: str = ""
    start_layer: int | None = None  # None: the model's default (profiles.py)
    start_layer_text: int = -1
    heatmap: str | None = None  # relevancy method; None: the model's default
    occlusion_window: int | None = None  # patches per side of the blanked window; None: the model's default
    legrad_layers: int | None = None  # LeGrad: the last image blocks explained; None: the model's default
    source_kind: str = "auto"  # --source: folder | manifest | webdataset | hf | parquet; auto decides from the location
    path_column: str = "path"
    image_column: str | None = None  # parquet / hf: the column of encoded images (default: detected)
    id_column: str | None = None  # parquet / hf: the column of image ids (default: key, or file/split + row)
    split: str | None = None  # hf: the split (default: train, or the only one)
    max_pixels: int = DEFAULT_MAX_PIXELS
    words: tuple[str, ...] | str = ()  # probe words (see probes.py)
    words_file: str | None = None
    # Probe words are scored in these prompt templates (audit.scanner.templates): openai | simple | none | FILE;
    # None: the model's default (profiles.py).
    templates: str | None = None
    # Each image's embedding kept in the scan (the embeddings table) for `audit ask`: float16 | float32 | none.
    embeddings: str = "float16"
    no_ascent: bool = False  # deprecated: --opinion without ascent says it
    # The opinion methods (audit.scanner.opinions), comma-separated: ascent (token search), concepts (sparse
    # decomposition), probes (the probe words alone); `both` is ascent,concepts. Probe words given with --words are
    # scored whatever this says.
    opinion: str = "ascent"
    # concepts: words (the shipped common words) | tokens (the tokenizer's words) | a file; None: the model's.
    vocabulary: str | None = None
    # concepts: the L1 penalty l1 of 0.5·|Cᵀw − x|² + l1·Σw (larger: fewer concepts per image); SpLiCE's λ is
    # 2·l1. None: the model's (profiles.py: 0.125, SpLiCE's published λ = 0.25).
    concept_l1: float | None = None
    concepts_per_image: int = 10  # concepts stored per image, largest weights first
    concept_heatmaps: int = 3  # of those, how many get a relevancy heatmap
    # Image mean the decomposition centres by: dataset | none | FILE.npy | SCAN_DIR; None: the model's default.
    concept_mean: str | None = None
    overwrite: bool = False
    engine: str = "local"  # local (one process) or ray (Ray Data actors); never changes a row
    ray_address: str | None = None  # a running Ray cluster to join; None: a local one
    # Seconds since the last commit after which the batches held are committed (sooner at store.writer.COMMIT_IMAGES
    # images): about what a kill can lose, against fewer, larger part files to read back. 0 commits every batch.
    commit_every: float = 60.0
    retry_errors: bool = False  # re-attempt images whose last attempt failed (a run-time choice, not a setting)
    # The ascent step's implementation (KERNELS); "auto" is resolved per device when the scan is planned. The
    # command line and audit.scan() read AUDIT_KERNEL (and AUDIT_COMPILE=0) as its default.
    kernel: str = "auto"
    # The per-image model work's arithmetic (PRECISIONS): "auto" is bfloat16 where the device computes it natively
    # (CUDA with bf16, CPUs with AVX512-BF16 or AMX), else float32; resolved when the scan is planned and stored.
    precision: str = "auto"
    triton_tiles: str | None = None  # --kernel triton: "rows,vocab,dim[,warps[,stages]]"; None: fused_step.Tiles()
    quiet: bool = False

    @property
    def opinions(self) -> tuple[str, ...]:
        """The opinion methods --opinion names (--no-ascent takes the ascent away), in OPINIONS' order. Probes
        join at planning when there are probe words."""
        chosen = parse_opinions(self.opinion)
        return tuple(o for o in chosen if not (self.no_ascent and o == "ascent"))

    @property
    def runs_ascent(self) -> bool:
        return "ascent" in self.opinions

    @property
    def runs_concepts(self) -> bool:
        return "concepts" in self.opinions

    def resolved_batch_size(self, device, vocab_size: int | None = None) -> int:
        """The batch size before the model is loaded, for a tokenizer of `vocab_size` tokens; on a GPU, the scan
        sizes "auto" from free memory once the model is loaded."""
        if self.batch_size == "auto":
            if device.type == "cuda":
                return 64
            if not self.runs_ascent:
                return 16  # no vocabulary-sized tensors: image forwards and relevancy passes, which batch well
            if vocab_size is None:
                return 1  # not known yet; the scan sizes it again once the tokenizer is read
            # On CPU, a vocabulary-sized tensor above glibc's 32 MB mmap ceiling is unmapped when freed and
            # page-faulted again by the next op; batches that stay under it are 2-3x faster per image
            # (bench/cpu_batch.py).
            per_image = self.candidates * self.tokens_per_seq * vocab_size * 4
            return max(1, (32 << 20) // per_image)
        try:
            return int(self.batch_size)
        except (TypeError, ValueError):
            raise AuditError(f"--batch-size must be a number or auto, not {self.batch_size!r}") from None

    def check(self) -> None:
        positive = {"tokens_per_seq": self.tokens_per_seq,
                    "candidates": self.candidates, "views": self.views, "max_pixels": self.max_pixels}
        for name, value in positive.items():
            if value < 1:
                raise AuditError(f"--{name.replace('_', '-')} must be at least 1, not {value}")
        if not self.commit_every >= 0:
            raise AuditError(f"--commit-every must be 0 or more seconds, not {self.commit_every}")
        if self.steps < 0 or self.workers < 0 or self.refine_rounds < 0:
            raise AuditError("--steps, --workers and --refine-rounds cannot be negative")
        if self.refine_top < 1:
            raise AuditError(f"refine_top must be at least 1, not {self.refine_top}")
        if not self.lr > 0:
            raise AuditError(f"--lr must be positive, not {self.lr}")
        if self.heatmap is not None and self.heatmap not in METHODS:
            raise AuditError(f"--heatmap must be one of {', '.join(METHODS)}, not {self.heatmap!r}")
        if self.source_kind not in SOURCE_KINDS:
            raise AuditError(f"--source must be one of {', '.join(SOURCE_KINDS)}, not {self.source_kind!r}")
        if self.engine not in ENGINES:
            raise AuditError(f"--engine must be one of {', '.join(ENGINES)}, not {self.engine!r}")
        if self.occlusion_window is not None and self.occlusion_window < 1:
            raise AuditError(f"--occlusion-window must be at least 1 patch, not {self.occlusion_window}")
        if self.legrad_layers is not None and self.legrad_layers < 1:
            raise AuditError(f"--legrad-layers must be at least 1, not {self.legrad_layers}")
        self.opinions  # noqa: B018 - parses --opinion, raising its one-line error
        if self.embeddings not in EMBEDDINGS:
            raise AuditError(f"--embeddings must be one of {', '.join(EMBEDDINGS)}, not {self.embeddings!r}")
        if self.precision not in PRECISIONS:
            raise AuditError(f"--precision must be one of {', '.join(PRECISIONS)}, not {self.precision!r}")
        if self.kernel not in KERNELS:
            raise AuditError(f"--kernel must be one of {', '.join(KERNELS)}, not {self.kernel!r}")
        if self.triton_tiles is not None:
            check_tiles(self.triton_tiles)
        if self.concept_l1 is not None and not self.concept_l1 > 0:
            raise AuditError(f"--concept-l1 must be positive, not {self.concept_l1}")
        if self.concepts_per_image < 1 or self.concept_heatmaps < 0:
            raise AuditError("--concepts-per-image must be at least 1 and --concept-heatmaps at least 0")
        if not self.runs_concepts and (self.vocabulary is not None or self.concept_mean is not None):
            raise AuditError("--vocabulary and --concept-mean shape the concept opinion: add concepts to --opinion "
                             "(--opinion concepts, or ascent,concepts)")
        if self.concept_heatmaps > self.concepts_per_image:
            raise AuditError(f"--concept-heatmaps {self.concept_heatmaps} is more than --concepts-per-image "
                             f"{self.concepts_per_image}: only stored concepts get heatmaps")

    def with_model_defaults(self) -> ScanOptions:
        """The options with every model-dependent default (None) filled in from the model's profile."""
        prof = profile(self.model)
        return dataclasses.replace(
            self, start_layer=prof.start_layer if self.start_layer is None else self.start_layer,
            heatmap=prof.heatmap if self.heatmap is None else self.heatmap,
            occlusion_window=prof.occlusion_window if self.occlusion_window is None else self.occlusion_window,
            legrad_layers=prof.legrad_layers if self.legrad_layers is None else self.legrad_layers,
            concept_mean=prof.concept_mean if self.concept_mean is None else self.concept_mean,
            concept_l1=prof.concept_l1 if self.concept_l1 is None else self.concept_l1,
            templates=prof.templates if self.templates is None else self.templates)

    def concepts(self):
        """The concept opinion's settings (an audit.scanner.concepts.ConceptSettings)."""
        from audit.scanner.concepts import ConceptSettings

        l1 = profile(self.model).concept_l1 if self.concept_l1 is None else self.concept_l1
        return ConceptSettings(l1=l1, per_image=self.concepts_per_image, heatmaps=self.concept_heatmaps)

    def ascent(self):
        """The ascent's settings (an audit.scanner.ascent.AscentConfig)."""
        from audit.scanner.ascent import AscentConfig

        return AscentConfig(tokens_per_seq=self.tokens_per_seq, candidates=self.candidates, steps=self.steps,
                            lr=self.lr, views=self.views, resample_views=self.resample_views, prompt=self.prompt,
                            refine_rounds=self.refine_rounds, refine_top=self.refine_top,
                            refine_words=self.refine_words)


@dataclass(frozen=True)
class VerifyOptions:
    """`audit verify`'s settings (audit.scanner.verify), recorded beside its rows: a re-run with others is refused."""
    faithfulness_images: int = 64  # a fixed, seeded sample of the scan's images; 0 skips faithfulness
    words_per_kind: int = 3  # each sampled image's first words of each kind (by rank)
    # Points of each curve after the first: 8 steps gave the demo's areas within 0.002 of 16 steps' at half the cost.
    steps: int = 8
    random_orders: int = 2  # random orders per image, the faithfulness baseline (averaged)
    group_by: tuple[str, ...] = ()  # grounding of the findings of these columns; none skips grounding
    grounding_images: int = 32  # per finding, the group's images with the word, highest cosine first
    random_draws: int = 8  # random blankings per image, the grounding baseline
    seed: int = 0

    def settings(self) -> dict:
        return dataclasses.asdict(self) | {"group_by": list(self.group_by)}


def check_tiles(text: str) -> None:
    """--triton-tiles reads rows,vocab,dim[,warps[,stages]]: powers of two (at least 16 for the three tiles)."""
    parts = text.split(",")
    try:
        values = [int(x) for x in parts]
        if not 3 <= len(values) <= 5:
            raise ValueError
    except ValueError:
        raise AuditError(f"--triton-tiles must read rows,vocab,dim[,warps[,stages]], not {text!r}") from None
    if any(v < 16 or v & (v - 1) for v in values[:3]) or any(v < 1 for v in values[3:]):
        raise AuditError(f"--triton-tiles {text!r}: rows, vocab and dim are powers of two of at least 16")


__all__ = ["DEFAULT_MODEL", "DEVICES", "ENGINES", "KERNELS", "OPINIONS", "PRECISIONS", "RUN_OPTIONS", "SHARED_SETTINGS",
           "SOURCE_KINDS", "ScanOptions", "VerifyOptions", "check_tiles", "parse_opinions"]
