# The two commands of the README: `make demo` and `make test`. Both install everything they
# need first (Debian packages, then a Python venv in .venv), idempotently.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP_APT := $(VENV)/.apt-stamp
STAMP_PIP := $(VENV)/.pip-stamp
# The Ansible example (examples/ansible) runs in its own venv: ansible and a pinned openstacksdk.
ANSIBLE_VENV := .venv-ansible
STAMP_ANSIBLE := $(ANSIBLE_VENV)/.pip-stamp
APT_PACKAGES := $(shell grep -v '^\#' etc/apt-packages.txt)
PYTHON ?= python3

.PHONY: setup test demo bench clean lint

setup: $(STAMP_APT) $(STAMP_PIP) $(STAMP_ANSIBLE)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

$(STAMP_APT): etc/apt-packages.txt | $(VENV)/bin/python
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 $$missing; \
	fi
	touch $@

$(STAMP_PIP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

$(STAMP_ANSIBLE): examples/ansible/requirements.txt
	$(PYTHON) -m venv $(ANSIBLE_VENV)
	$(ANSIBLE_VENV)/bin/pip install -q -r examples/ansible/requirements.txt
	touch $@

test: setup
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: setup
	$(VENV)/bin/vxnet demo

# The benchmarks compare with OVN (../shared/peers/ovn-lab.sh): its packages are only for them.
bench: setup
	@missing=$$(for p in $$(cat etc/apt-packages-bench.txt); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 $$missing; fi
	$(VENV)/bin/python -m bench

# ruff with the repo's config (pyproject.toml; the version is pinned in the test extras).
lint: setup
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(ANSIBLE_VENV) build src/*.egg-info
