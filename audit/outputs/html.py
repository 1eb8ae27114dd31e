"""The Jinja environment of the HTML outputs (report, diff): autoescaped, strict, with the shared formats."""

from __future__ import annotations

import jinja2

from audit import formats


def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.PackageLoader("audit.outputs", "templates"),
                             autoescape=jinja2.select_autoescape(default=True, default_for_string=True),
                             undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = formats.percent
    env.filters["num"] = formats.number
    env.filters["pval"] = formats.p_value
    return env
