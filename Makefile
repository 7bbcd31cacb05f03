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
  tesseract-ocr-fra tesseract-ocr-spa tesseract-ocr-ita tesseract-ocr-nld chromium chromium-driver \
  wamerican wngerman wfrench wspanish witalian
BIN := $(VENV)/bin

.PHONY: demo test install clean bench docs gpu-carry fuzz

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@# Synthetic invoices are drawn with fonts from Debian packages; Tesseract checks them (and is an OCR baseline);
	@# the row reader's rescoring favours the words of Debian's word lists (invoice_vlm/infer/lexicon.py).
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

# What scripts/gpu_check.sh needs on a GPU machine without network whose Python 3.12 has torch, numpy, pyarrow,
# pandas, tokenizers (and torch's own dependencies: jinja2, sympy, networkx, filelock, fsspec, typing_extensions), and
# as measured Pillow, scipy and pypdfium2, but lacks the rest: wheels of this venv's versions in .whl/ (the dependency closure of
# the project, transformers, trl, datasets, peft, accelerate and huggingface_hub, walked from .venv; huggingface_hub
# >= 2.4 needs httpx2, httpcore2, truststore and hf_xet), the invoice fonts in .fonts/. Left out, to stay under
# ~40 MB, so that the checkout (12 MB), .fonts (12 MB) and .whl fit the device tool's 64 MiB: scipy (35 MB),
# Pillow, pypdfium2, tensorboard and grpcio/protobuf (gpu_check.sh sets report_to none), lxml (sacrebleu's optional),
# fastapi/uvicorn (serve), kernels (USE_HUB_KERNELS=NO), bitsandbytes (43 MB: QLoRA runs only where the image has it),
# opencv-python-headless (64 MB: invoice_vlm.rows uses the image's scipy.ndimage there, the same boxes, slower).
GPU_WHEELS := transformers trl datasets peft accelerate huggingface_hub hf_xet httpx2 httpcore2 truststore h11 anyio \
  idna charset_normalizer safetensors tqdm pyyaml packaging psutil regex filelock fsspec dill multiprocess xxhash \
  faker jiwer rapidfuzz sacrebleu portalocker colorama tabulate typer click rich shellingham markdown_it_py mdurl \
  pygments pydantic pydantic_core annotated_types typing_inspection annotated_doc typing_extensions segno reportlab
gpu-carry: install
	rm -rf .whl .fonts
	$(BIN)/python -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$(for p in $(GPU_WHEELS); do echo "$$p==$$($(BIN)/python -c "import importlib.metadata as m; print(m.version('$$p'))")"; done)
	$(BIN)/python -c "from invoice_vlm.synth.fonts import FONT_FAMILIES as F, FONT_ROOT as R; import shutil, pathlib; \
	  [(pathlib.Path('.fonts', d).mkdir(parents=True, exist_ok=True), shutil.copy(R / d / f, pathlib.Path('.fonts', d, f))) \
	   for d, *fs, _ in F.values() for f in fs]"
	du -sh .whl .fonts; du -cb .whl/*.whl | tail -1 | awk '{printf "wheels: %.1f MB\n", $$1 / 1e6}'
