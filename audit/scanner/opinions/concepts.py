"""The concept opinion: each image's embedding as a sparse, non-negative sum of vocabulary entries (SpLiCE;
audit.scanner.concepts). The largest `--concept-heatmaps` weights of an image get a relevancy heatmap."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from audit.scanner.concepts import MEAN_IMAGES, Decomposition, ImageMean, read_mean
from audit.scanner.opinions.base import Opinion, OpinionBatch, OpinionRows
from audit.scanner.vocabulary import (
    Vocabulary,
    check_vocabulary,
    embeddings,
    named_vocabulary,
    store_embeddings,
    text_identity,
    text_mean,
)
from audit.store.schema import CONCEPT

log = logging.getLogger("audit.scan")


@dataclass
class ConceptPlan:
    """The concept opinion's inputs that are known before the model is loaded."""
    vocabulary: Vocabulary
    mean: ImageMean | None  # None: the dataset's mean, computed once the model is loaded and stored in scan.json


class ConceptOpinion(Opinion):
    name = "concepts"
    kind = CONCEPT
    options = ("vocabulary", "concept_l1", "concepts_per_image", "concept_heatmaps", "concept_mean")

    @classmethod
    def plan(cls, opts) -> ConceptPlan:
        from audit.scanner.models import get_tokenizer
        from audit.scanner.profiles import profile

        spec = opts.vocabulary or profile(opts.model).vocabulary
        tokenizer = get_tokenizer(opts.model) if spec == "tokens" else None
        return ConceptPlan(named_vocabulary(spec, tokenizer), read_mean(opts.concept_mean))

    @classmethod
    def settings(cls, opts, planned: ConceptPlan) -> dict:
        mean = planned.mean
        return {"vocabulary": planned.vocabulary.identity, "concept_l1": opts.concept_l1,
                "concepts_per_image": opts.concepts_per_image, "concept_heatmaps": opts.concept_heatmaps,
                "concept_mean": opts.concept_mean if mean is None else
                mean.spec + (f":{mean.sha256[:16]}" if mean.sha256 else "")}

    @classmethod
    def before_scan(cls, planned: ConceptPlan, scan) -> ConceptPlan:
        """The image mean the decomposition centres by: the one scan.json stores (a resume uses exactly it), else
        the one --concept-mean names, else the dataset's, computed now and stored."""
        cls._store_vocabulary(planned, scan)
        stored = scan.writer.config.get("concept_mean")
        if stored:
            return ConceptPlan(planned.vocabulary, ImageMean.from_json(stored))
        mean = planned.mean
        if mean is None:
            scan.say(f"audit scan: averaging the embeddings of the first {MEAN_IMAGES} images of the source to centre "
                     "the concept decomposition (once; stored in scan.json; those images are not encoded again)")
            mean = scan.first_pass().mean
        scan.writer.set_config("concept_mean", mean.to_json())
        return ConceptPlan(planned.vocabulary, mean)

    @staticmethod
    def _store_vocabulary(planned: ConceptPlan, scan) -> None:
        """The vocabulary's text embeddings into the scan directory, once (vocabulary.store_embeddings). From the
        same cache as build()'s, so the vocabulary is embedded once either way."""
        from audit.store.layout import vocabulary_path

        if not vocabulary_path(scan.writer.root).is_file():
            store_embeddings(scan.model()[0], planned.vocabulary, scan.plan.opts.model, scan.writer.root)

    @classmethod
    def build(cls, opts, towers, planned: ConceptPlan) -> ConceptOpinion:
        check_vocabulary(planned.vocabulary, towers.tokenizer, towers.context_length)
        identity = text_identity(opts.model, towers)
        embedded = embeddings(towers, planned.vocabulary, identity)
        return cls(Decomposition(planned.vocabulary.words, embedded, text_mean(towers, identity), planned.mean,
                                 opts.concepts()))

    def __init__(self, decomposition: Decomposition):
        self.decomposition = decomposition
        self.heatmaps = decomposition.settings.heatmaps

    def rows(self, batch: OpinionBatch) -> OpinionRows:
        words, fit = self.decomposition(batch.features())
        # Each concept's own cosine is the decomposition's, heatmap or not.
        words = [[{**w, "word_cosine": w["seq_cosine"]} for w in ws] for ws in words]
        return OpinionRows(words, [min(self.heatmaps, len(ws)) for ws in words], {"concept_cosine": fit})

    def words_per_image(self) -> int:
        return self.heatmaps


METHOD = ConceptOpinion
