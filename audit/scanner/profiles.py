"""What audit knows about a model beyond its open_clip config: one profile per model, with a default for all
the others. Kept free of torch so that option parsing and read-only commands can use it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

WEIGHTS_DIR = Path(__file__).parents[1] / "demo" / "weights"


@dataclass(frozen=True)
class ModelProfile:
    # Weights that ship inside the package, used by --pretrained auto (else auto means the 'openai' tag).
    bundled_weights: Path | None = None
    # Test-only configs: --pretrained auto means random weights.
    random_weights: bool = False
    # Channels per stride-2 stage of a convolutional stem before the ViT. open_clip configs cannot say this, so
    # models.build_model adds it before weights are loaded: when asked (training) or when the weights file
    # holds one.
    conv_stem: tuple[int, ...] | None = None
    # First image layer of the relevancy when --start-layer is not given (-1: the last, as in Chefer's CLIP
    # code, which suits 12-layer models whose last attention already points at objects).
    start_layer: int = -1
    # Relevancy method when --heatmap is not given (audit.scanner.relevancy.METHODS).
    heatmap: str = "chefer"
    # Side of the occlusion window in patches when --occlusion-window is not given (untuned for open_clip models).
    occlusion_window: int = 3
    # The last image layers LeGrad explains when --legrad-layers is not given (its authors' default, 2).
    legrad_layers: int = 2
    # Image mean the concept decomposition centres by when --concept-mean is not given: "dataset" (SpLiCE's
    # centring, for CLIPs trained on open text) or "none".
    concept_mean: str = "dataset"
    # L1 penalty of the concept decomposition when --concept-l1 is not given. audit minimises
    # 0.5·|Cᵀw − x|² + l1·Σw; SpLiCE's code minimises |Cᵀw − x|² + λ·Σw, so l1 = λ/2, and SpLiCE's published
    # λ = 0.25 (its default for open_clip ViT-B/32) is 0.125 here.
    concept_l1: float = 0.125
    # Prompt templates probe words are scored in when --templates is not given (audit.scanner.templates): the 7
    # that CLIP's authors picked from their 80 ImageNet templates by sequential forward selection (their prompt
    # engineering notebook, as open_clip ships them), which did as well as all 80 there. At an eleventh of the
    # text encoding: 100 phrases in all 80 take 41 s on a 2-core CPU with ViT-B-32 (bench/ask_cost.py), which
    # would be most of an `audit ask`.
    templates: str = "simple"
    # The concept vocabulary when --vocabulary is not given (audit.scanner.vocabulary): the shipped list of
    # 10,000 common English nouns and adjectives and 3,000 two-word nouns, as SpLiCE decomposes over common
    # one- and two-word phrases of captions.
    vocabulary: str = "words"


DEFAULT = ModelProfile()

PROFILES: dict[str, ModelProfile] = {
    "audit-tiny": ModelProfile(random_weights=True),
    "audit-demo": ModelProfile(
        bundled_weights=WEIGHTS_DIR / "audit-demo.safetensors",
        # The bundled weights (v1 on) hold a stem; v0's did not.
        conv_stem=(32, 64, 128),
        # 4 layers: its last-layer CLS attention reads tokens that have mixed in their neighbours, and only the
        # whole rollout traces relevance back to the object (colour words on 200 two-object scenes: peak on the
        # right object 98% from layer 0 against 70% from the last; see the model card).
        start_layer=0,
        # Chefer's, as for every model: on audit-demo v1 occlusion is far better for shape words (peak on the
        # named object in 97% of two-object scenes against 59%) but worse for background words (peak inside the
        # object's box in 78% of maps against 5%): blanking a patch of grass leaves the rest of the grass,
        # blanking the object changes the scene. Users pick per question.
        heatmap="chefer",
        # Chosen on scenes outside training and evaluation, by pointing for shape and colour words together
        # (4 of its 8 patches, about one and a half objects).
        occlusion_window=4,
        # All 4 of its layers, as for Chefer's start layer: on 200 two-object scenes LeGrad's peak lands on the
        # named object for colour words in 96.5% of maps with 4 layers against 68.5% with the last 2 (shape
        # words: 58.5% against 33%; `audit demo evaluate` prints the default's figures).
        legrad_layers=4,
        # Its text tower was trained on scene captions only: every other word of the vocabulary sits at one
        # point (the mean of the default vocabulary's embeddings has norm 0.999), so centring turns their tiny
        # differences into full-length junk atoms. On 200 held-out scenes the uncentred decomposition finds the
        # colour, shape and background among the top 5 concepts in 100%, 98% and 100% of scenes; centred by a
        # scene mean, in 27%, 17% and 1% (l1 0.2; bench/concept_recall.py).
        concept_mean="none",
        # Its tokenizer's words, not the shipped list: its text tower knows its captions' words only, so a two-word
        # phrase holding one ("yellow pages", "engagement ring") reads as that word and pushes it out of the top
        # 5. On 200 held-out scenes, colour/shape/background in the top 5: 100/98/100% with the tokenizer's words,
        # 100/98/100% with the list's 10,000 words alone, 28/39.5/58.5% with its phrases too
        # (bench/concept_vocabulary.py).
        vocabulary="tokens",
        # Measured before SpLiCE's value was read right (bench/concept_recall.py, 200 held-out scenes, uncentred:
        # colour/shape/background in the top 5 for 100/98/100% at 0.2 and 100/99/100% at 0.125); kept so its
        # scans and model card stay as they were. 0.2 is SpLiCE's λ = 0.4.
        concept_l1=0.2,
        # Bare words: it was trained on its own captions, bare words and 'a photo of a circle' among them, and
        # templates add nothing (bench/probe_templates.py, 300 held-out scenes: the same zero-shot accuracy for
        # colour, shape and background words, 1.000 / 0.993 / 1.000, and a separation d' of 17.35 / 4.31 / 15.44
        # bare against 17.10 / 4.29 / 14.71 with the 80 openai templates) at 80 times the text encoding.
        templates="none",
    ),
}


def profile(name: str) -> ModelProfile:
    return PROFILES.get(name, DEFAULT)
