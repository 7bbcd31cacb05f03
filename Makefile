# Two commands on a fresh machine:  `make demo` (the main job)  and  `make test` (the test suite).
# Both create .venv and install what they need into it.
#
# TORCH picks the PyTorch build. The default is the CPU wheel (2.13.0; on this project's machines it lies on
# disk, so no multi-GB CUDA download). On a GPU machine: `make demo TORCH=torch` for your platform's default.
PYTHON ?= python3
TORCH ?= torch==2.13.0
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test install clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@# Synthetic invoices are drawn with DejaVu fonts (Debian's fonts-dejavu-core).
	@test -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf || \
	  (apt-get update -qq && apt-get install -y -qq fonts-dejavu-core) || \
	  (echo "error: install the DejaVu fonts (Debian/Ubuntu: apt-get install fonts-dejavu-core)" && false)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $@

demo: install
	$(BIN)/invoice-vlm demo

test: install
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) runs data .pytest_cache
