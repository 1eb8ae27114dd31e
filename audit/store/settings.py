"""A scan's settings (scan.json "settings": everything that changes a stored row), read the same way whichever
audit wrote them, and compared between two scans.

audit 0.2 stored `opinion` (ascent | concepts | both) with an `ascent` flag, kept every opinion's settings whether
it ran or not, and did not record the ascent's kernel. This audit stores `opinions` (the methods that ran) and
only their settings; `upgrade` reads the older form as this one, so a resume, `audit check --baseline` and
`audit diff` compare like with like. Likewise scans stored every relevancy method's settings, and now store only
the method's that drew their heatmaps (`heatmap`).
"""

from __future__ import annotations

from audit.store.schema import ASCENT, CONCEPT, PROBE, SETTINGS_ADDED

# The ascent's settings as audit 0.2 stored them (its AscentConfig), which a scan without an ascent dropped.
ASCENT_SETTINGS = ("tokens_per_seq", "candidates", "steps", "lr", "tau", "views", "resample_views", "prompt", "keep",
                   "refine_rounds", "refine_top", "refine_words", "degrees", "translate", "p_affine")
CONCEPT_SETTINGS = ("vocabulary", "concept_l1", "concepts_per_image", "concept_heatmaps", "concept_mean")
# Each relevancy method's settings, as audit.scanner.relevancy.METHODS names them (the store does not import the
# scanner; tests/test_settings.py holds the two equal).
RELEVANCY_SETTINGS = {"chefer": ("start_layer", "start_layer_text"), "occlusion": ("occlusion_window",),
                      "legrad": ("legrad_layers",)}


def upgrade(settings: dict, runs: list[dict] | None = None) -> dict:
    """Settings of any audit's scan in this audit's form. The kernel of an older scan's ascent, and the precision
    of a scan made before --precision, are the defaults it ran with then, from its runs' devices: compile and
    bfloat16 on CUDA, eager and float32 elsewhere. Without a finished run the precision cannot be known and stays
    out (the kernel is taken as eager, as it always was)."""
    if str(settings.get("vocabulary", "")).startswith("default:"):  # the tokenizer's words, named before 0.3
        settings = {**settings, "vocabulary": "tokens:" + settings["vocabulary"].split(":", 1)[1]}
    if settings.get("probe_words") and "probe_templates" not in settings:
        settings = {**settings, "probe_templates": "none"}  # probe words were scored bare before schema 4
    if settings.get("heatmap") in RELEVANCY_SETTINGS:
        settings = relevancy_settings(settings)
    on_gpu = any(str(r.get("device", "")).startswith("cuda") for r in runs or ())
    if "model" in settings and "precision" not in settings and runs:
        # Before --precision, CUDA ran under bfloat16 autocast and every other device in float32.
        settings = {**settings, "precision": "bfloat16" if on_gpu else "float32"}
    if "opinions" in settings or "model" not in settings:  # this audit's form, or no scan's settings at all
        return dict(settings)
    s = {**SETTINGS_ADDED, **settings}
    opinion, ascent = s.pop("opinion"), s.pop("ascent", True)
    names = [n for n, runs_it in (("ascent", opinion in ("ascent", "both") and ascent),
                                  ("probes", bool(s.get("probe_words"))),
                                  ("concepts", opinion in ("concepts", "both"))) if runs_it]
    if "probes" not in names:
        s.pop("probe_words", None)
    if "ascent" in names:
        s["kernel"] = "compile" if on_gpu else "eager"
    else:
        for key in ASCENT_SETTINGS:
            s.pop(key, None)
    if "concepts" not in names:
        for key in CONCEPT_SETTINGS:
            s.pop(key, None)
    s["opinions"] = names
    return s


def differences(old: dict, new: dict) -> list[str]:
    """"name old -> new" for each setting the two scans (upgraded) both have and set differently, and for the
    opinions that ran; an opinion's own settings are compared only when both scans ran it."""
    old, new = upgrade(old), upgrade(new)
    keys = ["opinions"] + sorted(k for k in set(old) & set(new) if k != "opinions")
    return [f"{k} {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]


def differences_note(old: dict, new: dict, older: str = "the baseline") -> str | None:
    """One line naming the settings two scans differ in, or None."""
    found = differences(old, new)
    if not found:
        return None
    return (f"{older} was scanned with other settings ({'; '.join(found)}); differences may reflect the settings "
            "rather than the data")


def relevancy_settings(settings: dict) -> dict:
    """`settings` without the options of the relevancy methods that did not draw the heatmaps (scans before this
    audit stored all of them, whichever ran)."""
    used = set(RELEVANCY_SETTINGS[settings["heatmap"]])
    unused = {field for fields in RELEVANCY_SETTINGS.values() for field in fields} - used
    return {k: v for k, v in settings.items() if k not in unused}


OPINION_KINDS = {"ascent": ASCENT, "concepts": CONCEPT, "probes": PROBE}  # an opinion -> the kind of its words


def held_kind(settings: dict, allowed: tuple[str, ...] | list[str]) -> str:
    """The first of the `allowed` kinds of words whose opinion the scan ran (in the order given), or the first
    allowed when it ran none of them: what a rule or a comparison reads when no kind is named."""
    held = {OPINION_KINDS.get(o) for o in settings.get("opinions", ["ascent"])}
    return next((k for k in allowed if k in held), allowed[0])
