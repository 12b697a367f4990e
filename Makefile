# The two commands a newcomer needs: `make serve` and `make test`. Both set the machine up first.
.PHONY: setup serve test bench proto

setup:
	@tools/setup.sh

serve: setup
	.venv/bin/tollgate serve

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python tools/bench.py

proto: setup
	.venv/bin/python tools/gen_proto.py
