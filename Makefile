# milsil: everything a fresh clone needs, from two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= demo_out

.PHONY: setup test test-all demo bench lint format proto clean

setup: $(VENV)/.installed

# torch==2.14.1 / torchvision==0.29.1 are pinned in pyproject.toml.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: setup
	$(BIN)/pytest -q

# Also the checks marked slow (each is covered by a bench/ script as well).
test-all: setup
	$(BIN)/pytest -q -m ''

demo: setup
	$(BIN)/milsil synth $(DEMO_DIR)/data --patients 12 --images-per-patient 6 --size 128 --seed 0
	$(BIN)/milsil train $(DEMO_DIR)/data --out $(DEMO_DIR)/model --width 16 --epochs 8 --lr 3e-3 --seed 0
	$(BIN)/milsil heatmap $(DEMO_DIR)/data/images/*_malignant_0*.png --model $(DEMO_DIR)/model/best.pt --out $(DEMO_DIR)/heatmaps --compare
	$(BIN)/milsil evaluate $(DEMO_DIR)/data --folds 3 --epochs 6 --width 16 --lr 3e-3 --out $(DEMO_DIR)/evaluate

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
