# Two commands on a fresh machine: `make search` (the default TinyNet search) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install test test-all search bench-tinynet bench-proxy bench-formula bench-nb201 bench-ray bench-oneshot bench-bandit bench-crowd bench-hitdet bench-hw clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# PyTorch's CPU build first, pinned, so that no dependency pulls a CUDA build of several GB
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# two workers (the CI machine's two cores; conftest.py gives each test process one torch thread), a test
# file's tests on one worker (they share the runs they read)
test: install
	$(PY) -m pytest -q -n 2 --dist loadfile --durations=15

test-all: install
	$(PY) -m pytest -q -m ''

search: install
	$(VENV)/bin/nasplat search tinynet --flops 24M

bench-tinynet: install
	$(PY) bench/tinynet_reproduction.py

bench-proxy: install
	$(PY) bench/proxy.py

bench-formula: install
	$(PY) bench/formula.py

bench-nb201: install
	$(VENV)/bin/nasplat bench nb201 --strategies random,evolution,local,bayesian --seeds 100 --budget 12000s --out bench/out/nb201

bench-ray: install
	$(PY) bench/ray_dispatch.py
	$(PY) bench/ray_speedup.py
	$(PY) bench/ray_scale.py

bench-oneshot: install
	$(PY) bench/supernet_step.py
	$(PY) bench/oneshot_search.py
	$(PY) bench/cp_supervision.py

bench-bandit: install
	$(PY) bench/bandit_search.py
	$(PY) bench/abandit_robust.py

bench-crowd: install
	$(PY) bench/crowd_counting.py

bench-hitdet: install
	$(PY) bench/hitdet_search.py

# hardware-aware search on 14 real devices' latency tables, and few-shot predictors of a new device
bench-hw: install
	$(PY) bench/hw_constrained.py
	$(PY) bench/latency_predictor.py
	$(PY) bench/latency.py --stages repeat,lut,predictor

clean:
	rm -rf $(VENV) build *.egg-info
