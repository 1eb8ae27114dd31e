"""`audit verify`'s summary as text (the terminal) and JSON (CI): faithfulness per method and kind, with the
random baseline, and a verdict per finding."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from audit.outputs.files import write_text


def _num(x: float, digits: int = 3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _records(df: pd.DataFrame) -> list[dict]:
    """Rows as JSON-ready dicts: NaN as null."""
    return [{k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()}
            for r in df.to_dict("records")]


@dataclass
class VerificationSummary:
    faithfulness: pd.DataFrame  # analysis.verification.faithfulness_summary
    grounding: pd.DataFrame  # analysis.verification.grounding_summary
    blank: str  # what a blanked cell is filled with
    copies: str | None = None  # how the findings counted copies (analysis.duplicates.header)

    def text(self) -> str:
        lines = [self.copies[0].upper() + self.copies[1:] + "."] if self.copies and len(self.grounding) else []
        if len(self.faithfulness):
            lines += [f"Faithfulness (deletion: lower is better; insertion: higher is better; {self.blank}):",
                      f"  {'method':<10} {'kind':<8} {'images':>6}  {'deletion (95% CI)':<22} insertion (95% CI)"]
            for r in self.faithfulness.itertuples():
                lines.append(f"  {r.method:<10} {r.kind:<8} {r.images:>6}  "
                             f"{_num(r.deletion)} ({_num(r.deletion_lo)}-{_num(r.deletion_hi)}){'':<5} "
                             f"{_num(r.insertion)} ({_num(r.insertion_lo)}-{_num(r.insertion_hi)})")
        if len(self.grounding):
            lines += ["", "Grounding of findings (do the word's own cells carry it better than as many random cells? "
                      "needed: the extra fall when they are blanked; enough: the smaller fall when only they are "
                      "kept; effect: the two summed):"]
            for r in self.grounding.itertuples():
                box = ("" if math.isnan(r.drop_box) else
                       f"; box cells {_num(r.drop_box)}, the others {_num(r.drop_outside_box)}")
                lines.append(f"  {r.column}={r.grp} '{r.word}' ({r.kind}, {r.images} images): {r.verdict}; needed "
                             f"{_num(r.needed)}, enough {_num(r.enough)}, effect {_num(r.effect)} "
                             f"({_num(r.effect_lo)}-{_num(r.effect_hi)}), q={r.q:.2g}{box}")
        return "\n".join(lines) + "\n" if lines else "Nothing verified: no faithfulness sample and no --group-by.\n"

    def to_json(self) -> str:
        return json.dumps({"blank": self.blank, "copies": self.copies, "faithfulness": _records(self.faithfulness),
                           "findings": _records(self.grounding.rename(columns={"grp": "group"}))},
                          indent=2, ensure_ascii=False) + "\n"

    def write_json(self, path: str | os.PathLike) -> Path:
        return write_text(path, self.to_json(), "verify.json")
