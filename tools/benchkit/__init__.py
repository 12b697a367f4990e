"""tools/bench.py's parts: servers, load generators (h2load, an open-loop Poisson client), checks, verdicts, report."""
