# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test` (the test suite).
# Both create .venv and install what they need into it.
#
# TORCH picks the PyTorch build. The default is the CPU wheel (2.13.0; on this project's machines it lies on
# disk, so no multi-GB CUDA download). On a GPU machine: `make demo TORCH=torch` for your platform's default.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
APT_PACKAGES := fonts-dejavu-core fonts-liberation fonts-freefont-ttf fonts-crosextra-carlito \
  fonts-crosextra-caladea fonts-lato fonts-open-sans tesseract-ocr tesseract-ocr-eng tesseract-ocr-deu \
  tesseract-ocr-fra tesseract-ocr-spa tesseract-ocr-ita tesseract-ocr-nld chromium chromium-driver
BIN := $(VENV)/bin

.PHONY: demo test install clean bench docs gpu-carry fuzz

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@# Synthetic invoices are drawn with fonts from Debian packages; Tesseract checks them (and is an OCR baseline).
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing $$missing"; \
	  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; } || \
	  { echo "error: install these Debian packages: $$missing"; false; }; \
	fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/invoice-vlm demo

test: install
	$(BIN)/python -m pytest -q

# Fuzzing, bounded: each atheris target FUZZ_SECONDS (libFuzzer -max_total_time), then schemathesis on the server;
# summaries in runs/fuzz/<target>.json, crash inputs in runs/fuzz/crashes/. Not part of `make test`.
FUZZ_SECONDS ?= 300
fuzz: install
	$(BIN)/python -m pip install --quiet -e ".[dev,fuzz]"
	$(BIN)/python scripts/fuzz.py --target all --seconds $(FUZZ_SECONDS)

bench: install
	$(BIN)/invoice-vlm bench synth

# the sample grid shown in the README
docs: install
	$(BIN)/python scripts/sample_grid.py docs/synth-samples.png

clean:
	rm -rf $(VENV) runs data .pytest_cache

# What scripts/gpu_pretrain.sh needs on a GPU machine without network whose Python (3.12, with torch, numpy,
# pyarrow, pandas, tokenizers) lacks the rest: wheels of this venv's versions in .whl/, the invoice fonts in .fonts/.
GPU_WHEELS := transformers trl datasets dill multiprocess fsspec faker jiwer rapidfuzz accelerate peft sacrebleu \
  typer click rich shellingham pydantic pydantic_core annotated_types typing_inspection annotated_doc \
  typing_extensions regex segno reportlab
gpu-carry: install
	rm -rf .whl .fonts
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$(for p in $(GPU_WHEELS); do echo "$$p==$$($(BIN)/python -c "import importlib.metadata as m; print(m.version('$$p'))")"; done)
	$(BIN)/python -c "from invoice_vlm.synth.fonts import FONT_FAMILIES as F, FONT_ROOT as R; import shutil, pathlib; \
	  [(pathlib.Path('.fonts', d).mkdir(parents=True, exist_ok=True), shutil.copy(R / d / f, pathlib.Path('.fonts', d, f))) \
	   for d, *fs, _ in F.values() for f in fs]"
	du -sh .whl .fonts
