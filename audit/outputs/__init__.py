"""What users read: the HTML report, check results (text, JUnit, JSON, Markdown), diffs and explain tiles."""

TOP = 10  # words shown per group in the report
