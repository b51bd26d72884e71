# Loupe — every target sets itself up on a fresh machine (Python 3.11+ with venv).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
WORKERS ?= 1

.PHONY: install run test lint bench models clean

$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements-dev.txt
	# several packages install different opencv distributions into the same cv2/ folder:
	# reinstall the headless contrib build last so cv2/ is one consistent 4.x build
	$(PY) -m pip install -q --force-reinstall --no-deps opencv-contrib-python-headless==4.14.0.94
	# this project itself, editable: the `loupe` console script (dependencies are the pins above)
	$(PY) -m pip install -q --no-deps -e .
	touch $@

install: $(VENV)/.installed

run: install
	$(VENV)/bin/uvicorn app.main:app --host $(HOST) --port $(PORT) --workers $(WORKERS) --no-access-log --no-proxy-headers

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

# ruff (pyflakes, pycodestyle, bugbear, isort, pyupgrade) and mypy, settings in pyproject.toml
lint: install
	$(VENV)/bin/ruff check app scripts
	$(VENV)/bin/mypy

bench: install
	$(PY) scripts/bench.py $(BENCH_ARGS)

models: install
	$(PY) scripts/download_models.py $(MODELS_ARGS)

clean:
	rm -rf $(VENV) .pytest_cache
