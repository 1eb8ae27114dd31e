"""`audit check`: policy files (parse.py) and the rules that gate a scan on them (rules.py)."""
