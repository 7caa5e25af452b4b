# Developer and CI entry points. `make test` needs only Python 3.11+, Java 17+ and Maven
# (or KAFKA_HOME); it installs the rest into .venv and deploy/kafka/lib, and starts its own
# Kafka broker. `.ci/run` runs `make test`.

PYTHON ?= $(or $(shell command -v python3.11 2>/dev/null),python3)
VENV := .venv
VPY := $(VENV)/bin/python
VENV_STAMP := $(VENV)/.installed

.PHONY: venv kafka prometheus chromium kustomize wrk lint image test chaos soak bench run clean

venv: $(VENV_STAMP)

# Re-runs only when the dependency declarations change.
$(VENV_STAMP): pyproject.toml requirements.lock
	test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	$(VPY) -m pip install --quiet -e '.[dev]' -c requirements.lock
	touch $@

# Kafka jars from deploy/kafka/pom.xml (cached by the pom's hash), or KAFKA_HOME; same code
# path as `hitl-connector dev-kafka` and the test fixtures.
kafka: venv
	$(VPY) -m connector.devkafka --resolve-only

# Debian's prometheus (with promtool) for the rule tests and the real-scrape test.
prometheus:
	sh scripts/ensure_prometheus.sh

# Debian's chromium for the reviewer-page browser test (tests/integration/test_reviewer_ui.py).
chromium:
	sh scripts/ensure_chromium.sh

# A real kustomize (built with Go, cached) to render deploy/k8s in the tests.
kustomize:
	sh scripts/ensure_kustomize.sh >/dev/null

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# wrk (Debian) for the sandbox ceiling in `make bench`.
wrk:
	sh scripts/ensure_debian_package.sh wrk wrk

# The container image (deploy/docker/Dockerfile) built with podman from Debian packages only:
# a debootstrap base (cached in /var/cache/hitl-image), `podman build --isolation chroot`,
# `hitl-connector --help` and `check` run inside the build. 62-99 s from a clean clone with
# nothing cached, 22 s with the base cached (root; see scripts/build_image.sh). IMAGE_TAG
# names the result.
IMAGE_TAG ?= hitl-kafka-connector:dev
image:
	sh scripts/build_image.sh $(IMAGE_TAG)

# Everything but the long fault scenarios (marker `slow`); those run in `make chaos`.
test: venv kafka prometheus chromium kustomize lint image
	$(VENV)/bin/pytest -m "not slow"

# Every fault-injection scenario (marker `chaos`), the long ones included; each prints its
# ledger line (-s shows them as they run).
chaos: venv kafka
	$(VENV)/bin/pytest -m chaos -s $(ARGS)

# 30 minutes of steady load with webhook faults on; prints RSS, open files, tasks and lag every
# minute and fails if they grow or anything is lost. Not in CI. ARGS="--minutes 5" shortens it.
soak: venv kafka
	$(VPY) scripts/soak.py $(ARGS)

# Every performance scenario of docs/performance.md; writes bench-results/latest.{md,json}.
# ARGS="--quick" for a fast smoke run, ARGS="--only submit,webhook" for some.
# The baselines (Quix Streams apps, naive clients, FastAPI receiver) run from .venv-bench, the
# connector and the harness from .venv at the locked versions.
BENCH_VENV := .venv-bench
# The connector as it was before issue 14 (one HTTP stack, one role loop) runs beside today's
# in the submit and webhook scenarios: before/after ratios from one run. BENCH_BEFORE= skips it.
BENCH_BEFORE ?= 91f509a
bench: venv kafka wrk
	test -x $(BENCH_VENV)/bin/python || $(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/python -m pip install --quiet -e '.[bench]'
	BENCH_BASELINE_PYTHON=$(BENCH_VENV)/bin/python $(VPY) -m bench \
		$(if $(BENCH_BEFORE),--before $(BENCH_BEFORE)) $(ARGS)

# The local stack: broker, sandbox (auto-reviewer), connector (all roles), load generator.
# Flags go in ARGS, e.g. make run ARGS="--rate 20 --bootstrap localhost:9092".
run: venv kafka
	$(VPY) -m connector.devstack $(ARGS)

clean:
	rm -rf $(VENV) deploy/kafka/lib deploy/kafka/lib.tmp-* .pytest_cache .mypy_cache \
		.ruff_cache .hypothesis
