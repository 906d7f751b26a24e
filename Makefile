# Two commands matter: `make demo` runs the main job on the embedded default, `make test` runs
# every test. Both install what they need (Debian packages too) and are quick the second time.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
# torch first, pinned: a bare requirement would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: install sysdeps test lint demo bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e '.[agent,train,dev,plots,tracking]'
	touch $(STAMP)

# W&B (`report_to = ["wandb"]`, ~25 MB with its service binary) only for the tests: `make demo` does not use it.
WANDB_STAMP := $(VENV)/.installed-wandb
$(WANDB_STAMP): pyproject.toml | $(STAMP)
	$(PIP) install -q -e '.[wandb]'
	touch $(WANDB_STAMP)

# Debian packages the tests use for real: sshd (the box), sudo (the box's non-root user escalates
# as on a Deep Learning AMI), shellcheck (lints the instance user-data script).
SYSDEPS := /usr/sbin/sshd:openssh-server /usr/bin/ssh:openssh-client /usr/bin/sudo:sudo /usr/bin/shellcheck:shellcheck

sysdeps:
	@missing=""; for dep in $(SYSDEPS); do [ -x "$${dep%%:*}" ] || missing="$$missing $${dep#*:}"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing$$missing (used by the tests)"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

# checkov pins its own boto3, pydantic and friends: it gets a venv of its own (tests run it on infra/).
CHECKOV_VENV := .venv-checkov
CHECKOV_SPEC ?= checkov==3.3.30
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(subst ==,-,$(CHECKOV_SPEC))

$(CHECKOV_STAMP):
	$(PYTHON) -m venv $(CHECKOV_VENV)
	$(CHECKOV_VENV)/bin/pip install -q $(CHECKOV_SPEC)
	touch $(CHECKOV_STAMP)

install: $(STAMP) sysdeps $(CHECKOV_STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

test: install $(WANDB_STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -n 2 --dist loadgroup -q $(PYTEST_ARGS)

demo: install
	$(PY) -m controller.demo

bench: install
	$(PY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) build *.egg-info .pytest_cache .ruff_cache

# The GPU check's wheels (bench/gpu/check.py, issue 16): what a bare CUDA box lacks, trimmed to
# about 50 MiB, into bench/gpu/wheels/ (gitignored); prints each wheel's size and the total.
# GPU_PY: the box's Python version (default: this venv's); GPU_BNB_DROP: bitsandbytes members to leave out.
GPU_PY ?=
GPU_BNB_DROP ?=
.PHONY: gpu-wheels
gpu-wheels: $(STAMP)
	$(PY) -m bench.gpu.wheels download --dest bench/gpu/wheels $(if $(GPU_PY),--python-version $(GPU_PY)) $(if $(GPU_BNB_DROP),--bnb-drop '$(GPU_BNB_DROP)')
