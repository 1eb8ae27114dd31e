"""Statistics over a scan's rows: associations between words and groups, where CLIP looks, drift.

The defaults of every command that tests associations (report, policies, diff) live here, free of heavy imports
so that the command line can show them.
"""

MIN_COUNT = 5  # words seen in fewer images are not tested
FDR = 0.05  # the false discovery rate the association tests are controlled at
# An ascent word counts as one of an image's words only when its own cosine with the image (the word alone,
# re-tokenised) is at least this share of the image's best sequence cosine. Measured on two 60-image demo scans
# (bench/word_quality.py): every colour, shape and background word the ascent found scored at least 0.74 of the
# best, the junk tokens mostly below 0.1, and nothing else between 0.65 and 0.74; any threshold from 0.1 to 0.7
# keeps all the scene words, and 0.5 sits in the middle of that gap. (Not yet measured on a pretrained CLIP.)
MIN_RELATIVE_COSINE = 0.5
STOP_WORDS = "default"  # audit.words.STOP_WORDS; "none", or a file with one word per line
# How the (group, word) tests are corrected for multiplicity: "tarone-bh" (Benjamini-Hochberg over the pairs
# that could reach significance at all, given how often the word occurs: Tarone 1990, Gilbert 2005) or "bh"
# (Benjamini-Hochberg over every tested pair, as before).
PROCEDURES = ("tarone-bh", "bh")
PROCEDURE = "tarone-bh"
# Which hypothesis each (group, word) test states: "greater" (the word is over-represented in the group, the
# claim a flag makes; one-sided) or "two-sided" (a difference either way, as audit 0.2 tested, flagging only the
# over-represented side). Measured with bench/power.py: the one-sided test finds weak plants more often at the
# same false discovery rate.
ALTERNATIVES = ("greater", "two-sided")
ALTERNATIVE = "greater"
# How every statistic counts copies (analysis.duplicates): "collapse" counts each cluster of exact or near copies
# once (once in each group it spans), "keep" counts every image, as audit did before it found copies.
COPIES_MODES = ("collapse", "keep")
COPIES = "collapse"
