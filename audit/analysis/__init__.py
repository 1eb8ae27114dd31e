"""Statistics over a scan's rows: associations between words and groups, where CLIP looks, drift.

The defaults of every command that tests associations (report, policies, diff) live here, free of heavy imports
so that the command line can show them.
"""

MIN_COUNT = 5  # words seen in fewer images are not tested
FDR = 0.05  # Benjamini-Hochberg false discovery rate
