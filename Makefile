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
GUEST_PACKAGES := $(shell grep -v '^\#' etc/apt-packages-guests.txt)
# The lab's QEMU guest image (docs/guests.md): built once from Debian packages, cached outside the tree.
STAMP_GUEST := $(VENV)/.guest-stamp
PYTHON ?= python3

.PHONY: setup test demo bench clean lint

setup: $(STAMP_APT) $(STAMP_PIP) $(STAMP_ANSIBLE)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip

$(STAMP_APT): etc/apt-packages.txt etc/apt-packages-guests.txt | $(VENV)/bin/python
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq -o DPkg::Lock::Timeout=600 $$missing; \
	fi
	@missing=$$(for p in $(GUEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages (no recommends): $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 $$missing; \
	fi
	touch $@

$(STAMP_PIP): pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

$(STAMP_ANSIBLE): examples/ansible/requirements.txt
	$(PYTHON) -m venv $(ANSIBLE_VENV)
	$(ANSIBLE_VENV)/bin/pip install -q -r examples/ansible/requirements.txt
	touch $@

$(STAMP_GUEST): src/vxnet/lab/image.py | $(STAMP_APT) $(STAMP_PIP)
	$(PY) -m vxnet.lab.image
	touch $@

test: setup $(STAMP_GUEST)
	$(VENV)/bin/pytest -q -p no:cacheprovider $(PYTEST_ARGS)

demo: setup $(STAMP_GUEST)
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
