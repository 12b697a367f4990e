# The two commands a newcomer needs: `make serve` and `make test`. Both set the machine up first.
.PHONY: setup serve test bench proto

setup:
	@tools/setup.sh

# A local admin token (kill switches, approvals, status) in the data directory, made once, readable by you alone.
serve: setup
	@mkdir -p .tollgate && [ -s .tollgate/admin-token ] || (umask 077; .venv/bin/python -c \
	  "import secrets; print(secrets.token_urlsafe(32))" > .tollgate/admin-token)
	.venv/bin/tollgate serve --admin-token-file .tollgate/admin-token

test: setup
	.venv/bin/python -m pytest

bench: setup
	.venv/bin/python tools/bench.py

proto: setup
	.venv/bin/python tools/gen_proto.py
