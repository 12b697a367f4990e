"""The tollgate command line: serve, authorize, decisions, policy tests."""
