VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
LOCK := requirements/lock.txt

.PHONY: install demo test bench bench-peer bench-profile bench-accelerator compile-real lock clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The exact versions of requirements/lock.txt (the suite passed with them), then this package on top
# without touching them. A changed lock or pyproject reinstalls.
$(STAMP): pyproject.toml $(LOCK) | $(PY)
	$(PIP) install -q -r $(LOCK)
	$(PIP) install -q --no-deps -e .
	$(PIP) check
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rho-jax demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/rho-jax bench $(ARGS)

# Re-resolves pyproject.toml's ranges (newest compatible releases) in a scratch venv and writes the lock.
# CPU torch is pinned first so that nothing pulls a CUDA build. Commit the new lock only after
# `make test` (which reinstalls from it) passes the whole suite.
lock:
	rm -rf .venv-lock
	python3 -m venv .venv-lock
	.venv-lock/bin/pip install -q --upgrade pip
	.venv-lock/bin/pip install -q torch==2.13.0
	.venv-lock/bin/pip install -q -e '.[test,tpu]'
	{ echo "# Exact versions the whole suite passed with (Python 3.11, Linux x86_64, CPU)."; \
	  echo "# Installed by make install/demo/test and CI; refresh with 'make lock' (see README)."; \
	  .venv-lock/bin/pip freeze --exclude-editable; } > $(LOCK)
	rm -rf .venv-lock

# rho-jax vs the PyTorch peer (HF Llama, torch from the test extra), alternating step by step.
bench-peer: $(STAMP)
	$(VENV)/bin/rho-jax bench --peer --config=configs/bench_tiny.py $(ARGS)
	$(VENV)/bin/rho-jax bench --peer --config=configs/bench_demo.py $(ARGS)

# Every real config compiled by XLA's TPU compiler (libtpu, in the lock) for its slice and one other
# generation, on this host: the rows of BENCHMARKS.md's TPU table (about an hour on 2 CPU cores).
REAL_COMPILES ?= tinyllama_owm_reference:v4-32 tinyllama_owm_reference:v6e-16 tinyllama_owm_slm:v4-32 \
	tinyllama_owm_slm:v6e-16 mistral7b_owm_reference:v5p-128 mistral7b_owm_reference:v6e-64 \
	mistral7b_owm_slm:v5p-128 mistral7b_owm_slm:v6e-64 general_631_slm:v5litepod-64 general_631_slm:v4-128
compile-real: $(STAMP)
	@for run in $(REAL_COMPILES); do \
	  c=$${run%%:*}; t=$${run##*:}; \
	  $(VENV)/bin/rho-jax compile --config=configs/$$c.py --topology=$$t $(ARGS) | grep '^| [a-z]' \
	    | sed "s/^| /| $$c | /" || true; \
	done

# Op-level profile of one step, rho-jax and the peer, grouped alike (the BENCHMARKS.md profile table).
bench-profile: $(STAMP)
	$(VENV)/bin/python scripts/profile_step.py configs/bench_demo.py $(ARGS)
	$(VENV)/bin/python scripts/profile_step.py configs/bench_tiny.py $(ARGS)

# The lent GPU/TPU: rho-jax's four modes and the peer in one call, rows with MFU into BENCHMARKS.md.
bench-accelerator:
	PYTHON=$(PY) scripts/accelerator_bench.sh $(ARGS)

clean:
	rm -rf $(VENV) .venv-lock build *.egg-info
