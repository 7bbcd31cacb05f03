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

.PHONY: demo test install clean bench docs

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

bench: install
	$(BIN)/invoice-vlm bench synth

# the sample grid shown in the README
docs: install
	$(BIN)/python scripts/sample_grid.py docs/synth-samples.png

clean:
	rm -rf $(VENV) runs data .pytest_cache
