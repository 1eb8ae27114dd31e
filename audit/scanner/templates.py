"""Prompt templates for scoring probe words the way CLIP is used zero-shot (Radford et al., 2021): a word is
put into each template ("a photo of a {}."), the texts' unit embeddings are averaged and normalised again, and
that vector is scored against the image. A bare word is a poor text query for CLIP; the ensemble is the
convention its authors and open_clip evaluate with.

--templates names a set:
- openai: the 80 ImageNet templates of CLIP's paper, as open_clip ships them;
- simple: the 7 of them CLIP's authors picked by forward selection, which did as well (the default for real
  models: profiles.py);
- none: the bare word;
- a file: one template per line, each holding "{}" where the word goes (# starts a comment).
The templates are recorded in the scan's settings as text, so a file may change under its name.
"""

from __future__ import annotations

import os
from pathlib import Path

from audit.errors import AuditError
from audit.words import read_lines

NAMED = ("openai", "simple", "none")


def _open_clip_set(name: str) -> list[str]:
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES

    chosen = OPENAI_IMAGENET_TEMPLATES if name == "openai" else SIMPLE_IMAGENET_TEMPLATES
    return [t("{}") for t in chosen]  # open_clip keeps them as functions of the class name


def parse_templates(spec: str | os.PathLike) -> list[str]:
    """The templates a --templates value names, each with one "{}"; ["{}"] for none."""
    text = str(spec)
    if text == "none":
        return ["{}"]
    if text in NAMED:
        return _open_clip_set(text)
    path = Path(text)
    lines = read_lines(path, "--templates", f"--templates {text!r} is neither {', '.join(NAMED)} nor a file that "
                       "exists")
    out = [line.strip() for line in lines if line.strip() and not line.lstrip().startswith("#")]
    if not out:
        raise AuditError(f"--templates {path} holds no template")
    for line in out:
        if line.count("{}") != 1 or "{" in line.replace("{}", "", 1) or "}" in line.replace("{}", "", 1):
            raise AuditError(f"--templates {path}: each template holds {{}} once, where the word goes; not "
                             f"{line[:60]!r}")
    return list(dict.fromkeys(out))


def fill(templates: list[str], word: str) -> list[str]:
    return [t.replace("{}", word) for t in templates]


def text_vectors(towers, words: list[str], templates: list[str]):
    """Each word's template ensemble [W, D] (float32, unit): the mean of its filled templates' unit text embeddings,
    normalised again. One word's vector does not depend on the others asked with it."""
    import torch
    import torch.nn.functional as F

    from audit.scanner.vocabulary import encode_texts

    if not words:
        return torch.zeros(0, 1)
    texts = [text for w in words for text in fill(templates, w)]
    emb = torch.from_numpy(encode_texts(towers, texts)).reshape(len(words), len(templates), -1)
    return F.normalize(emb.mean(1), dim=-1)


def check_fit(words, templates: list[str], tokenizer, context_length: int) -> None:
    """A filled template longer than the text context would be cut and scored as something else: refuse it."""
    from audit.scanner.probes import check_lengths

    longest = max(templates, key=lambda t: len(tokenizer.encode(t.replace("{}", ""))))
    try:
        check_lengths(tuple(fill([longest], w)[0] for w in words), tokenizer, context_length)
    except AuditError as e:
        raise AuditError(f"{e} (in the template {longest!r}; --templates none scores the bare words)") from None
