"""`tollgate serve`: the sidecar process — configuration, bundle activation, metrics, and the server itself."""
