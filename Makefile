# The two commands: `make demo` and `make test`. Each sets up everything it needs by itself.
VENV ?= .venv
PYTHON ?= python3
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist
PYTEST_ARGS ?=
# pytest-xdist workers; whole files go to one worker, so a file's module fixtures run once.
PYTEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile
BAZEL_TEST_ARGS ?= --test_tag_filters=-slow

# `make test`: everything but the @pytest.mark.long tests (the three phases end to end through
# the binary included); `make test-long`: those (CI runs both); `make test-all`: every test in one
# session; `make test-fast`: no @pytest.mark.slow binary runs at all.
.PHONY: install demo test test-long test-all test-fast lint format fashion-mnist bazel-test clean

# `make install`: the virtualenv with tf-simclr and its pinned dependencies (both commands run it).
install: $(STAMP)

$(STAMP): setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# Debian's dataset-fashion-mnist (IDX files). Without apt the demo falls back to synthetic data.
fashion-mnist:
	@if [ ! -f $(FASHION_MNIST)/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then \
		echo "installing Debian package dataset-fashion-mnist"; \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist \
			|| echo "could not install dataset-fashion-mnist; the demo will use synthetic data"; \
	fi

demo: $(STAMP) fashion-mnist
	$(PY) -m tf_simclr.demo

test: $(STAMP) fashion-mnist
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PYTEST) -m "not long" $(PYTEST_ARGS)

test-long: $(STAMP) fashion-mnist
	$(PYTEST) -m long $(PYTEST_ARGS)

test-all: $(STAMP) fashion-mnist
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PYTEST) $(PYTEST_ARGS)

test-fast: $(STAMP) fashion-mnist
	$(PY) -m ruff check .
	$(PYTEST) -m "not slow" $(PYTEST_ARGS)

# `bazel test //...` offline with Debian's bazel-bootstrap (Bazel 4.2; see docs/development.md):
# the quick subset by default, every test with BAZEL_TEST_ARGS=.
bazel-test: $(STAMP)
	@if ! command -v bazel >/dev/null && command -v apt-get >/dev/null; then \
		echo "installing Debian package bazel-bootstrap"; \
		apt-get update -qq && apt-get install -y -qq bazel-bootstrap \
			|| echo "could not install bazel-bootstrap; make bazel-test needs a bazel binary"; \
	fi
	bazel test $(BAZEL_TEST_ARGS) //...

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache demo_run
