# The two commands a newcomer needs: `make demo` and `make test`. Both install first.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is a range in pyproject for users; here it is pinned to the wheels this machine carries.
TORCH_PIN := torch==2.14.1 torchvision==0.29.1

.PHONY: install browser demo docs test lint mutation clean

install: $(VENV)/.installed

# torch's CUDA build needs about 5.6 GB in the venv; no pip cache keeps a second copy of anything.
$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --no-cache-dir $(TORCH_PIN)
	$(PY) -m pip install -q --no-cache-dir -e '.[dev,docs,all]'
	touch $@

demo: install
	$(VENV)/bin/audit demo --out demo-out

# The report is tested in a real headless browser; Debian's chromium is installed when missing.
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; }

# Strict: a broken link, anchor or reference fails. The pictures come from a run of the demo (cached per version
# of the package in build/docs-assets) photographed in headless Chromium.
# Material for MkDocs announces its successor (Zensical) on every build; the note is for maintainers, not for CI logs.
docs: install browser
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet
	@echo "docs: open build/site/index.html in a browser"

test: install browser
	$(PY) -m ruff check audit tests bench docs/hooks.py
	$(MAKE) --no-print-directory docs
	$(PY) -m pytest -q

# Not part of `make test`: applies small bugs to the critical modules and checks the suite notices each.
mutation: install
	$(PY) bench/mutation.py

lint: install
	$(PY) -m ruff check audit tests bench

clean:
	rm -rf $(VENV) demo-out build dist *.egg-info
