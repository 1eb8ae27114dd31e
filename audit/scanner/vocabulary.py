"""The concept opinion's vocabulary: which words, and their text embeddings, computed once per model and
vocabulary and kept in an on-disk cache.

--vocabulary names one:
- words: 10,000 common English nouns and adjectives and 3,000 frequent two-word nouns, shipped with the package
  (data/concepts-en.txt, made from wordfreq, WordNet 3.0 and web bigram counts by data/make_concepts.py, which
  says how); the default for open_clip models, whose text towers read common words and phrases (SpLiCE
  decomposes over the frequent words and phrases of LAION's captions for the same reason);
- tokens: the model tokenizer's own whole-word tokens (BPE tokens that end a word) that are real words by a
  simple rule: ASCII letters only, at least MIN_LENGTH letters, no special token, not a stop word
  (audit.words.STOP_WORDS). The rule cannot tell a word from a word ending ("allery" ends "gallery");
- a file: one word or phrase per line.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from audit.errors import AuditError
from audit.words import STOP_WORDS, read_lines

log = logging.getLogger("audit.scan")

MIN_LENGTH = 3
MAX_WORDS = 200_000
# The text side is centred by the mean of this model's default vocabulary (every MEAN_STRIDE-th word), whatever
# vocabulary a scan uses: the mean stands for the model's text space, not for one list of words.
MEAN_STRIDE = 8
EMBED_VERSION = 1  # bump when the way embeddings are computed changes: old cache entries are then not used
CHUNK = 512  # words per text-tower pass
_WORD = re.compile(r"[a-z]+")


@dataclass(frozen=True)
class Vocabulary:
    words: tuple[str, ...]
    name: str  # "default" or the file's name
    sha256: str  # of the words, one per line: what a scan's settings and the cache key record

    @property
    def identity(self) -> str:
        return f"{self.name}:{self.sha256[:16]}"


def _hashed(words: list[str], name: str) -> Vocabulary:
    digest = hashlib.sha256("\n".join(words).encode("utf-8")).hexdigest()
    return Vocabulary(tuple(words), name, digest)


def from_words(words, name: str) -> Vocabulary:
    """A vocabulary of the given words, in order (for a list made in code rather than read from a file)."""
    return _hashed(list(words), name)


@functools.lru_cache(maxsize=4)  # one tokenizer per model; the ascent asks for every batch
def word_tokens(tokenizer) -> tuple[tuple[int, str], ...]:
    """(token id, word) of the tokenizer's whole-word tokens that are real words by the rule above, in token
    order (BPE merge order, so the most frequent words of the tokenizer's corpus come first)."""
    encoder = getattr(tokenizer, "encoder", None)
    if not isinstance(encoder, dict):
        raise AuditError("this model's tokenizer has no BPE vocabulary to draw concepts from; pass --vocabulary FILE")
    special = {getattr(tokenizer, "sot_token_id", None), getattr(tokenizer, "eot_token_id", None),
               *getattr(tokenizer, "all_special_ids", [])}
    found = []
    for token, index in encoder.items():
        if not token.endswith("</w>") or index in special:
            continue
        word = token[:-4]
        if len(word) >= MIN_LENGTH and _WORD.fullmatch(word) and word not in STOP_WORDS:
            found.append((index, word))
    return tuple(sorted(found))


WORDS_FILE = Path(__file__).with_name("data") / "concepts-en.txt"
NAMED = ("words", "tokens")


def default_vocabulary(tokenizer) -> Vocabulary:
    """The tokenizer's real whole words (word_tokens): --vocabulary tokens. (Named "default" in scans' settings
    since it was the default before the shipped word list; store.settings reads that name as "tokens".)"""
    return _hashed([w for _, w in word_tokens(tokenizer)], "tokens")


@functools.lru_cache(maxsize=1)
def common_words() -> Vocabulary:
    """The shipped list of common English words: --vocabulary words."""
    vocab = read_vocabulary(WORDS_FILE)
    return Vocabulary(vocab.words, "words", vocab.sha256)


def named_vocabulary(spec: str, tokenizer) -> Vocabulary:
    """What a --vocabulary value names: words, tokens, or a file."""
    if spec == "words":
        return common_words()
    if spec == "tokens":
        return default_vocabulary(tokenizer)
    return read_vocabulary(spec)


def read_vocabulary(path: str | os.PathLike) -> Vocabulary:
    """One word or phrase per line (# starts a comment), spelled as scans store concepts: lower case, runs of
    white space collapsed; repeats are dropped."""
    p = Path(path)
    lines = read_lines(p, "--vocabulary", f"--vocabulary {p} is neither words, tokens nor a file that exists; pass a "
                       "text file with one word or phrase per line")
    words = list(dict.fromkeys(" ".join(line.split("#", 1)[0].lower().split()) for line in lines))
    words = [w for w in words if w]
    if len(words) < 2:
        raise AuditError(f"--vocabulary {p} lists {len(words)} word(s); a decomposition needs at least 2")
    if len(words) > MAX_WORDS:
        raise AuditError(f"--vocabulary {p} lists {len(words)} entries; at most {MAX_WORDS}")
    return _hashed(words, p.name)


def check_vocabulary(vocab: Vocabulary, tokenizer, context_length: int) -> None:
    """Entries the model cannot read whole would be scored as something else: refuse them, naming the first."""
    room = context_length - 2
    for w in vocab.words:
        # Byte-level BPE gives a token at least a byte: an entry with a letter or digit and a few bytes surely
        # fits, and tokenizing all 13,000 default words cost 1.8 s of every concept scan's start.
        if len(w.encode("utf-8")) * 3 <= room and any(c.isalnum() for c in w):
            continue
        n = len(tokenizer.encode(w))
        if n == 0 or n > room:
            what = "has no tokens the model knows" if n == 0 else f"is {n} tokens; the text context holds {room}"
            raise AuditError(f"vocabulary entry {w[:60]!r} {what}")


def cache_dir() -> Path:
    """AUDIT_CACHE_DIR, else $XDG_CACHE_HOME/audit, else ~/.cache/audit."""
    if os.environ.get("AUDIT_CACHE_DIR"):
        return Path(os.environ["AUDIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "audit"


def _cache_key(model_identity: str, words_sha: str, what: str) -> str:
    text = json.dumps({"model": model_identity, "words": words_sha, "what": what, "version": EMBED_VERSION},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


@torch.no_grad()
def encode_texts(towers, words) -> np.ndarray:
    """Unit text embeddings [N, D] of texts, float32, CHUNK texts per text-tower pass."""
    out = []
    for lo in range(0, len(words), CHUNK):
        ids, eot = towers.tokenize(list(words[lo:lo + CHUNK]))
        feats, _ = towers.encode_ids(ids, eot)
        out.append(F.normalize(feats.float(), dim=-1).cpu().numpy())
    return np.concatenate(out).astype(np.float32)


def _cached(key: str, words: tuple[str, ...], compute) -> np.ndarray:
    """The array stored under `key` for `words`, computed and stored on a miss. A damaged or mismatched entry is
    recomputed; an unwritable cache only costs the computation next time."""
    folder = cache_dir() / "concepts"
    data, names = folder / f"{key}.npy", folder / f"{key}.json"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        import filelock

        lock = filelock.FileLock(str(folder / f"{key}.lock"))
        lock.acquire(timeout=3600)  # another process (a Ray actor) may be computing the same entry
    except (OSError, filelock.Timeout) as e:
        log.warning(f"audit scan: cannot use the cache in {folder} ({e}); computing the vocabulary's embeddings "
                    "without it")
        return compute()
    try:
        if data.exists() and names.exists():
            try:
                stored = json.loads(names.read_text(encoding="utf-8"))
                array = np.load(data, allow_pickle=False)
                if tuple(stored) == words and array.shape[0] == len(words):
                    return array
            except (OSError, ValueError):
                pass
            log.warning(f"audit scan: the cached embeddings {data} are damaged or stale; computing them again")
        array = compute()
        try:
            for path, write in ((names, lambda f: f.write(json.dumps(list(words)).encode("utf-8"))),
                                (data, lambda f: np.save(f, array, allow_pickle=False))):
                tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
                with open(tmp, "wb") as f:
                    write(f)
                os.replace(tmp, path)
        except OSError as e:
            log.warning(f"audit scan: could not write the cache in {folder} ({e})")
        return array
    finally:
        lock.release()


def text_identity(model: str, towers) -> str:
    """What a vocabulary's text embeddings are cached and stored under: the model's name and its text weights."""
    return f"{model}|text:{towers.text_digest()}"


def store_embeddings(towers, vocab: Vocabulary, model: str, root) -> tuple[list[str], np.ndarray]:
    """The vocabulary's entries and unit text embeddings [V, D] (from the cache), also written into the scan
    directory `root` (store.layout.write_vocabulary) for the readers that load no model: the drift's words in
    `audit check` and `audit diff`."""
    from audit.store.layout import write_vocabulary

    check_vocabulary(vocab, towers.tokenizer, towers.context_length)
    identity = text_identity(model, towers)
    words, array = list(vocab.words), embeddings(towers, vocab, identity).float().cpu().numpy()
    write_vocabulary(root, words, array, identity)
    return words, array


def embeddings(towers, vocab: Vocabulary, model_identity: str) -> torch.Tensor:
    """Normalized text embeddings of the vocabulary [V, D], float32 on the model's device, from the cache."""
    def compute() -> np.ndarray:
        log.info(f"audit scan: computing the text embeddings of {len(vocab.words)} vocabulary entries once "
                 f"(cached in {cache_dir()})")
        return encode_texts(towers, vocab.words)

    key = _cache_key(model_identity, vocab.sha256, "embeddings")
    return torch.from_numpy(_cached(key, vocab.words, compute)).to(towers.device)


def text_mean(towers, model_identity: str) -> torch.Tensor:
    """Mean of the normalized embeddings of every MEAN_STRIDE-th word of the model's default vocabulary [D]."""
    sample = _hashed(list(default_vocabulary(towers.tokenizer).words[::MEAN_STRIDE]), "default-mean-sample")
    key = _cache_key(model_identity, sample.sha256, "embeddings")
    array = _cached(key, sample.words, lambda: encode_texts(towers, sample.words))
    return torch.from_numpy(array.mean(0)).to(towers.device)

