# `make demo` and `make test` each set everything up from a fresh machine, then run.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install data chromium demo test test-fast test-avx2 bench bench-quality bench-robust bench-claims lint docs clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST from the Debian package, unless IMAGEJEPA_DATA points elsewhere.
data:
	@if [ -n "$$IMAGEJEPA_DATA" ] || [ -f $(FMNIST) ]; then \
		echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get install -y -q dataset-fashion-mnist || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }; \
	else \
		echo "Fashion-MNIST not found and apt-get unavailable: set IMAGEJEPA_DATA to a folder with its IDX files"; \
	fi

demo: install data
	rm -rf runs/demo
	$(VENV)/bin/imagejepa pretrain --config configs/fmnist_vit_tiny.yaml --run-dir runs/demo
	$(VENV)/bin/imagejepa eval linear --checkpoint runs/demo --data fashion-mnist --baselines \
		--out runs/demo/linear_probe.json
	$(VENV)/bin/imagejepa eval knn --checkpoint runs/demo --data fashion-mnist --baselines \
		--out runs/demo/knn.json
	$(VENV)/bin/imagejepa report runs/demo

# Headless Chromium, for the test that looks at report.html as a browser draws it.
chromium:
	@if command -v chromium >/dev/null 2>&1; then \
		echo "chromium: found"; \
	elif command -v apt-get >/dev/null 2>&1; then \
		$(SUDO) apt-get install -y -q chromium || \
		{ $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium; }; \
	else \
		echo "chromium not found and apt-get unavailable: install Chromium (the report test needs it)"; \
	fi

test: install data chromium
	$(PY) -m pytest -q

test-fast: install
	$(PY) -m pytest -q -m "not slow"

# The suite as a CPU with AVX2 only sees it (PyTorch, oneDNN and MKL capped at AVX2): on a
# machine with AVX512 this runs the other CPU path (fp32 by default, no packed bf16 kernels).
test-avx2: install data chromium
	ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(PY) -m pytest -q

bench: install
	$(VENV)/bin/imagejepa bench masks
	$(VENV)/bin/imagejepa bench train
	$(VENV)/bin/imagejepa bench embed

# Pretrain the demo with a 9-minute budget, then linear, kNN and 10-shot probes with both baselines.
bench-quality: install data
	rm -rf runs/quality
	$(PY) benchmarks/quality_fmnist.py --minutes 9 --run-dir runs/quality

# The default recipe (recipe: auto) on five datasets of different sizes and kinds, each with a
# fixed budget (about 40 minutes in all on 2 cores); results in runs/robust/robustness.json.
# The paper's comparisons by compute (bench/claims.py): every cell is cached in runs/claims, so
# an interrupted run continues where it stopped (about 4 hours on 2 cores for the whole grid).
bench-claims: install data
	$(VENV)/bin/imagejepa bench claims --out runs/claims

bench-robust: install data
	$(PY) -m pip install --quiet -e '.[bench]'
	rm -rf runs/robust/fmnist-* runs/robust/digits runs/robust/shapes
	$(PY) benchmarks/robustness.py --out runs/robust

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

# The documentation (mkdocs.yml, docs/, the API reference from the docstrings) into site/;
# --strict: a broken link, anchor or reference fails the build.
docs: install
	$(VENV)/bin/mkdocs build --strict --site-dir site

clean:
	rm -rf $(VENV) runs build src/*.egg-info
