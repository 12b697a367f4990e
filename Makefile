# The two commands a newcomer needs: `make serve` and `make test`. Both set the machine up first.
.PHONY: setup serve test bench bench-fleet proto

setup:
	@tools/setup.sh

# A local admin token (kill switches, approvals, status) in the data directory, made once, readable by you alone;
# the quick start's approver groups (README "Approvals") from samples/quickstart.yaml. Beside the sidecar, the web
# console on the same data dir (http://127.0.0.1:8181), stopped with it; when the store holds no account yet, a
# first one, `admin` in group admin, with a random password written to .tollgate/console-admin-password (0600:
# never on the terminal, never in argv).
serve: setup
	@mkdir -p .tollgate && [ -s .tollgate/admin-token ] || (umask 077; .venv/bin/python -c \
	  "import secrets; print(secrets.token_urlsafe(32))" > .tollgate/admin-token)
	@.venv/bin/tollgate users list --data-dir .tollgate 2>/dev/null | grep -q . || (umask 077; \
	  .venv/bin/python -c "import secrets; print(secrets.token_urlsafe(18))" > .tollgate/console-admin-password \
	  && .venv/bin/tollgate users add admin --group admin --data-dir .tollgate < .tollgate/console-admin-password \
	  && echo "console: sign in as admin, password in .tollgate/console-admin-password")
	@.venv/bin/tollgate console --config samples/quickstart.yaml --data-dir .tollgate & console=$$!; \
	trap 'kill $$console 2>/dev/null' EXIT INT TERM; \
	.venv/bin/tollgate serve --admin-token-file .tollgate/admin-token --config samples/quickstart.yaml

# The whole suite, then the time-sensitive tests (marked `clock`) again with every server's clock started seconds
# before the next UTC new year, so they cross a midnight, a month end and a year end. Both in parallel
# (pytest-xdist): the suite waits on server subprocesses and sockets more than it computes, so 4 workers on 2 cores;
# --dist loadfile keeps each module, and so its module-scoped servers, on one worker. Each worker has its own
# PostgreSQL server and temp dirs. `make test PYTEST_PARALLEL=` runs in one process.
PYTEST_PARALLEL ?= -n 4 --dist loadfile
test: setup
	.venv/bin/python -m pytest $(PYTEST_PARALLEL)
	.venv/bin/python -m pytest $(PYTEST_PARALLEL) -m clock --clock-start year-end

bench: setup
	.venv/bin/python tools/bench.py

# Budget decisions on SQLite vs PostgreSQL, and kill-switch propagation across three sidecars (docs/BENCHMARKS.md).
bench-fleet: setup
	.venv/bin/python tools/bench_fleet.py

proto: setup
	.venv/bin/python tools/gen_proto.py

# The console's pictures in docs/console/*.png (README shows the inbox), taken by the browser tests' Chromium from a
# real console and sidecar (test_browser: the approvals and operations pages; test_browser_fleet: the fleet of two
# sidecars on PostgreSQL; test_outcomes: outcomes); a normal test run leaves them alone.
.PHONY: screenshots
screenshots: setup
	TOLLGATE_SCREENSHOTS=1 .venv/bin/python -m pytest tests/console/test_browser.py tests/console/test_browser_fleet.py \
	  tests/console/test_outcomes.py -q
