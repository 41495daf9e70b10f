# The two commands of the README: `make demo` (main job) and `make test` (the suite CI runs).
PY := .venv/bin/python

.PHONY: setup test test-slow demo bench lint
setup:
	@scripts/setup.sh

test: setup
	$(PY) -m pytest -q --durations=10

test-slow: setup
	$(PY) -m pytest -q -m slow

demo: setup
	.venv/bin/trqam demo

bench: setup
	.venv/bin/trqam bench --json

lint: setup
	.venv/bin/ruff check .
