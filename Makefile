# Two commands do all the set-up on a fresh machine:
#   make demo   venv, install, then `lora-inspector check` on the bundled seed case
#   make test   venv, install, then the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: install demo test bench bench-merge bench-fleet fixtures clean

install: $(STAMP)

# torch is pinned first: the CPU wheel of 2.13.0 is what this machine serves quickly; the project
# itself only asks for torch>=2.4, which that satisfies, so pip adds nothing heavier.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

# The seed case has two errors, so check exits 1: the demo expects exactly that. Then the merge
# that repairs it (resizing to the adapter's 70,840 rows), and a scan of the merged vocabulary tensors.
demo: $(STAMP)
	$(BIN)/lora-inspector check fixtures/seed/base fixtures/seed/adapter; \
	  rc=$$?; echo "check exit code: $$rc (1 = errors found, as expected for the seed case)"; test $$rc -eq 1
	$(BIN)/lora-inspector merge fixtures/seed/base fixtures/seed/adapter --out demo-out/merged --force
	$(BIN)/lora-inspector scan demo-out/merged --match 'embed|lm_head'

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python bench/scan_70b.py

bench-merge: $(STAMP)
	$(BIN)/python bench/merge_bench.py

bench-fleet: $(STAMP)
	$(BIN)/python bench/fleet_check.py

fixtures: $(STAMP)
	$(BIN)/python fixtures/make_seed.py

clean:
	rm -rf $(VENV) .pytest_cache bench/out demo-out
