# LLM101n — the two commands a newcomer needs:
#   make start   set up, build the book, start JupyterLab on your workspace, the book and the storyteller web app
#   make test    set up, then every test: lint, package tests, honesty gate, notebooks, nbgrader class, book, browser
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
VENV := .venv
PY := $(VENV)/bin/python
LLM := $(VENV)/bin/llm101n
export PATH := $(abspath $(VENV))/bin:$(PATH)
export OMP_NUM_THREADS ?= 2
# tiktoken's encodings, cached offline by scripts/assets.sh (tiktoken downloads into it if empty)
export TIKTOKEN_CACHE_DIR ?= $(CURDIR)/.assets/tiktoken

.PHONY: start test setup book lint unit graded honesty notebooks notebooks-check exercises exercises-check class e2e release \
	screenshots clean

start: setup book
	$(LLM) start

test: setup lint unit honesty notebooks-check exercises-check class book e2e
	@echo "make test: all green"

setup:
	@bash scripts/setup.sh

book: setup
	bash scripts/build_book.sh

# ruff for Python; eslint (eslint.config.mjs, installed by scripts/assets.sh) for our JavaScript and CSS
lint: setup
	$(VENV)/bin/ruff check .
	.assets/node_modules/.bin/eslint --max-warnings 0 .

# Platform tests, on the reference storylib (no browser). The graded tests (grading/tests) run on the reference in
# `make honesty`, through the grader, where any failure is an error: running them here too would double their time.
unit: setup
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -q tests --ignore=tests/e2e

# The graded tests in-process on the reference (quicker to debug than through the grader; not part of `make test`).
graded: setup
	PYTHONPATH=$(CURDIR) $(PY) -m pytest -q grading/tests

honesty: setup
	$(LLM) honesty

# Every generated notebook: scripts/notebooks/build_*.py write solutions/ and the book pages they own (unexecuted),
# then nbgrader releases exercises/ from solutions/. The same sources give the same bytes.
notebooks: setup
	$(PY) -m grading.authoring
	$(LLM) exercises

# Seconds: build into a scratch folder and name each committed notebook that differs.
notebooks-check: setup
	$(PY) -m grading.authoring --check

exercises: setup
	$(LLM) exercises

exercises-check: setup
	$(LLM) exercises --check

# A pinned grading seed: the class's fresh inputs, reproducible in CI (an instructor's run draws a new one).
class: setup
	LLM101N_GRADING_SEED=20261206 $(LLM) class _build/class

e2e: setup
	$(PY) -m pytest -q tests/e2e

release: setup
	$(LLM) release dist/learner --force

# The README's pictures: book pages, and the ones the browser tests take (tests write them to tmp otherwise).
screenshots: setup
	$(PY) scripts/screenshots.py
	LLM101N_UPDATE_SCREENSHOTS=1 $(PY) -m pytest -q tests/e2e/test_ch06_widget.py tests/e2e/test_chat_lab.py \
		tests/e2e/test_webapp.py
	LLM101N_UPDATE_SCREENSHOTS=1 LLM101N_UPDATE_RESULTS=1 $(PY) -m pytest -q \
		tests/e2e/test_storyteller_page.py::test_storyteller_runs_in_the_browser   # + bench/results/browser_engine.json

# Chapter 13's storyteller in one C file (storylib/c/storyteller.c) -> build/storyteller
.PHONY: c
c:
	bash scripts/build_c.sh

clean:
	rm -rf _build dist
