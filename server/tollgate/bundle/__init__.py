"""Policy bundles: a directory laid out like rego/ or an OPA bundle .tar.gz, loaded with explicit limits."""

from tollgate.bundle._loader import (
    DEFAULT_SIZE_LIMIT,
    Bundle,
    BundleError,
    BundleManifest,
    load_bundle,
)

__all__ = ["DEFAULT_SIZE_LIMIT", "Bundle", "BundleError", "BundleManifest", "load_bundle"]
