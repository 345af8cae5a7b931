# raftlib developer tasks.  Everything runs inside a project-local virtualenv (.venv) that the
# targets create and populate themselves: a fresh machine needs only python3, pip, gcc and make.
#
#   make test        fast suite twice (compiled core, then RAFTLIB_PURE=1), mypy, ruff
#   make test-slow   long sweeps marked @pytest.mark.slow (compiled core only)
#   make demo        python -m examples.kvstore.demo (a 3-process etcd-compatible cluster tour)
#   make bench       core hot-path micro-benchmarks (compiled vs pure)
#   make clean       build artefacts and caches;  make distclean also removes .venv
#
# Variables: PYTHON (interpreter used to create the venv), VENV, PYTEST_ARGS (extra pytest
# arguments, e.g. make test PYTEST_ARGS="-k log -x"), BENCH_ARGS.

PYTHON ?= python3
VENV ?= .venv
PYTEST_ARGS ?=
BENCH_ARGS ?=

VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
EXT_SUFFIX := $(shell $(PYTHON) -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
EXT := raftlib/_core$(EXT_SUFFIX)

.PHONY: all venv build stubs test test-fast test-pure lint test-slow demo bench clean distclean

all: test

$(VPY):
	$(PYTHON) -m venv $(VENV)

# Re-install when the build configuration changes (editable: the in-place extension is used).
$(STAMP): $(VPY) setup.py pyproject.toml raftlib/_version.py
	$(VPY) -m pip install --quiet --upgrade pip "setuptools>=68" wheel "Cython>=3.0"
	$(VPY) -m pip install --quiet -e '.[test,kv]'
	touch $@

venv: $(STAMP)

# Rebuild the extension in place whenever the Cython source changes.
$(EXT): raftlib/_core.pyx setup.py $(STAMP)
	RAFTLIB_REQUIRE_EXTENSIONS=1 $(VPY) setup.py --quiet build_ext --inplace
	touch $@

# etcd's gRPC stubs for the KV store (examples/kvstore/proto; regenerated when a .proto changes).
stubs: $(STAMP)
	$(VPY) -c "from examples.kvstore.proto import ensure_generated; ensure_generated()"

build: $(EXT) stubs

test-fast: build
	RAFTLIB_EXPECT_COMPILED=1 $(VPY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

test-pure: build
	RAFTLIB_PURE=1 $(VPY) -m pytest -q -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VPY) -m mypy raftlib
	$(VPY) -m ruff check raftlib tests benchmarks

# Runs every step even when an earlier one fails (so one report shows everything), then fails
# if any step failed.
test: build
	@status=0; \
	echo "== pytest, compiled core"; \
	RAFTLIB_EXPECT_COMPILED=1 $(VPY) -m pytest -q -m "not slow" $(PYTEST_ARGS) || status=1; \
	echo "== pytest, RAFTLIB_PURE=1"; \
	RAFTLIB_PURE=1 $(VPY) -m pytest -q -m "not slow" $(PYTEST_ARGS) || status=1; \
	echo "== mypy"; \
	$(VPY) -m mypy raftlib || status=1; \
	echo "== ruff"; \
	$(VPY) -m ruff check raftlib tests benchmarks || status=1; \
	exit $$status

# Exit status 5 means "no tests collected": the slow suite may legitimately be empty.
test-slow: build
	RAFTLIB_EXPECT_COMPILED=1 $(VPY) -m pytest -q -m slow $(PYTEST_ARGS); \
	status=$$?; \
	if [ $$status -eq 5 ]; then echo "test-slow: no slow tests collected"; exit 0; fi; \
	exit $$status

# Jepsen-style tests (tests/jepsen, docs/reliability.md): kvstore members in network namespaces,
# real partitions, kill -9, pauses; needs root, ip and iptables (scripts/install-netem.sh).
# jepsen-short is what CI runs inside `make test-slow` (3 x 60 s + the stale-read control);
# jepsen runs 5 x 5 min, alternating 3- and 5-member clusters.  Summaries go to build/jepsen-*.jsonl.
.PHONY: jepsen jepsen-short
jepsen-short: build
	RAFTLIB_JEPSEN_LOG=build/jepsen-short.jsonl $(VPY) -m pytest -q -s -m slow tests/jepsen $(PYTEST_ARGS)

jepsen: build
	RAFTLIB_JEPSEN_RUNS=5 RAFTLIB_JEPSEN_DURATION=300 RAFTLIB_JEPSEN_MEMBERS=3,5 \
	RAFTLIB_JEPSEN_LOG=build/jepsen.jsonl $(VPY) -m pytest -q -s -m slow tests/jepsen $(PYTEST_ARGS)

# Soak (tests/soak.py, docs/reliability.md "Soak"): 10 minutes of mixed load on a 3-member kvstore
# cluster with a leader change every minute; RSS and WAL figures printed (CI runs the 2-minute
# version through `make test-slow`).  fuzz: coverage-guided codec fuzzing with atheris, if it installs.
.PHONY: soak fuzz
soak: build
	mkdir -p build && $(VPY) tests/soak.py --minutes 10 --json build/soak.json

fuzz: build
	$(VPY) -m pip install --quiet atheris && \
	$(VPY) benchmarks/fuzz_codec_atheris.py -max_total_time=300

demo: build
	$(VPY) -m examples.kvstore.demo

bench: build
	$(VPY) benchmarks/bench_core.py $(BENCH_ARGS)

clean:
	rm -rf build dist *.egg-info raftlib/_core.c raftlib/_core.html raftlib/*.so \
		.pytest_cache .mypy_cache .ruff_cache .hypothesis
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +
	rm -f examples/kvstore/proto/*_pb2.py examples/kvstore/proto/*_pb2_grpc.py examples/kvstore/proto/.generated-with

distclean: clean
	rm -rf $(VENV)
