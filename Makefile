# Every target builds its own virtual environment first: a fresh machine needs nothing but python3.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: help venv test test-compiled demo lint format clean

help:
	@echo "make demo   emulator + gateway in one process, a few invocations, a table (no AWS account)"
	@echo "make test   the whole test suite against real sockets, boto3 and the AWS CLI"
	@echo "make test-compiled  the same suite against the hot modules compiled with mypyc"
	@echo "make lint   ruff check, ruff format --check, mypy --strict on gateway/"
	@echo "make bench  throughput, latency, CPU and memory against nginx proxy_pass (minutes)"
	@echo "make tail   a request's phases inside the gateway at one connection, its slowest 1 %"
	@echo "make soak   minutes of mixed traffic; memory, fds and tasks must not grow"
	@echo "make fuzz   minutes of request streams checked against h11, and of schemathesis (not in CI)"

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# Debian's prometheus (server, promtool) and awscli (CLI v2) packages, which the tests drive.
test: $(STAMP)
	@# A compiled module in this tree would be imported in place of the .py file being tested.
	@! find gateway -name '*.so' | grep . || { echo "compiled modules in gateway/: remove them (make clean)"; exit 1; }
	bash scripts/ensure-test-tools.sh
	$(BIN)/pytest

# The same suite against the build the image ships: the hot modules compiled with mypyc
# (setup.py, SMGW_COMPILE=1), in a copy of the tracked files under /tmp; this tree stays pure
# Python. A minute of compiling more than `make test`.
test-compiled: $(STAMP)
	bash scripts/ensure-test-tools.sh
	VENV_BIN=$(CURDIR)/$(BIN) bash scripts/test-compiled.sh

demo: $(STAMP)
	$(BIN)/sagemaker-gateway demo

lint: $(STAMP)
	$(BIN)/ruff check gateway tests bench setup.py
	$(BIN)/ruff format --check gateway tests bench setup.py
	$(BIN)/mypy gateway

format: $(STAMP)
	$(BIN)/ruff format gateway tests
	$(BIN)/ruff check --fix gateway tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
	find gateway -name '*.so' -delete

# --- Deploy: the container image and the Kubernetes manifests (deploy/README.md) ---------------
.PHONY: deploy-check image-test

# Render both kustomize overlays, validate every object against the Kubernetes 1.30 schemas
# (strict), promtool the alert rules, check the dependency lock, hadolint the Dockerfile. Seconds.
deploy-check: $(STAMP)
	VENV_BIN=$(CURDIR)/$(BIN) bash deploy/scripts/deploy-check.sh

# Build the Dockerfile with podman on a locally bootstrapped stand-in for its base image, run it
# against the emulator and check health, one signed invocation, non-root, SIGTERM. A few minutes.
image-test: $(STAMP)
	VENV_BIN=$(CURDIR)/$(BIN) bash deploy/scripts/image-test.sh

.PHONY: bench
bench: $(STAMP)  ## gateway vs nginx proxy_pass, pinned, one table; a few minutes
	bash bench/install.sh
	$(BIN)/pip install --quiet -e '.[bench]'
	@# The gateway as the image ships it: a copy of this tree with the hot modules compiled.
	work=$$(mktemp -d); VENV_BIN=$(CURDIR)/$(BIN) bash scripts/compiled-copy.sh $$work/tree \
	    && $(BIN)/python bench/run.py --gateway-tree $$work/tree; \
	    status=$$?; rm -rf $$work; exit $$status

.PHONY: tail
tail: $(STAMP)  ## where a request's time goes inside the gateway at one connection; ~30 s
	bash bench/install.sh
	$(BIN)/python bench/tail.py --seconds $${TAIL_SECONDS:-20}

.PHONY: soak
soak: $(STAMP)  ## a few minutes of mixed traffic; memory, fds and tasks must not grow
	$(BIN)/python bench/soak.py --duration $${SOAK_SECONDS:-180}

# Not in CI: long fuzzing runs against the live gateway and the emulator, one command a line.
# The HTTP oracle (h11 as the reference, tests/test_http_oracle.py): ORACLE_EXAMPLES generated
# and mutated request streams a test. schemathesis, judged by the gateway's OpenAPI
# description: GATEWAY_FUZZ_SECONDS of it, a new seed each run (`make test` runs both short).
.PHONY: fuzz
fuzz: $(STAMP)
	ORACLE_EXAMPLES=$${ORACLE_EXAMPLES:-5000} $(BIN)/pytest -q -p no:cacheprovider tests/test_http_oracle.py -k "generated or mutated"
	GATEWAY_FUZZ_SECONDS=$${GATEWAY_FUZZ_SECONDS:-300} $(BIN)/pytest -q -p no:cacheprovider tests/test_schemathesis.py -k finds_nothing
