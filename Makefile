VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: install demo test bench bench-peer bench-accelerator clean

$(PY):
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# torch first, pinned, so that transformers never pulls a CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rho-jax demo $(ARGS)

test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/rho-jax bench $(ARGS)

# rho-jax vs the PyTorch peer (HF Llama, torch from the test extra), alternating step by step.
bench-peer: $(STAMP)
	$(VENV)/bin/rho-jax bench --peer --config=configs/bench_tiny.py $(ARGS)
	$(VENV)/bin/rho-jax bench --peer --config=configs/bench_demo.py $(ARGS)

# The lent GPU/TPU: rho-jax's four modes and the peer in one call, rows with MFU into BENCHMARKS.md.
bench-accelerator:
	PYTHON=$(PY) scripts/accelerator_bench.sh $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
