# attnlab: `make demo` sets up and runs the main job, `make test` sets up and runs the tests.
.PHONY: setup demo test bench

setup:
	bash scripts/setup_env.sh

demo: setup
	.venv/bin/python -m attnlab demo

test: setup
	.venv/bin/python -m pytest -q tests

bench: setup
	.venv/bin/python -m attnlab bench speed
