"""Policy bundles: a directory laid out like rego/ or an OPA bundle .tar.gz, loaded with explicit limits;
built reproducibly, signed and verified in OPA's bundle format."""

from tollgate.bundle._archive import fsync_directory, write_file_atomically
from tollgate.bundle._build import BuildError, BuiltBundle, build_bundle, git_revision
from tollgate.bundle._loader import (
    DEFAULT_SIZE_LIMIT,
    Bundle,
    BundleError,
    BundleManifest,
    load_bundle,
    read_directory,
)
from tollgate.bundle._signing import (
    ALGORITHMS,
    PrivateKey,
    PublicKey,
    SignatureError,
    SignedBundle,
    VerifiedBundle,
    load_private_key,
    load_public_key,
    load_public_keys,
    sign_bundle,
    verify_bundle,
)
from tollgate.bundle._source import (
    BundleSource,
    DirectorySource,
    Fetched,
    FetchError,
    FileSource,
    HttpSource,
    open_source,
)
from tollgate.bundle._status import Activation, BundleStatus, Failure, SourceState

__all__ = [
    "ALGORITHMS",
    "DEFAULT_SIZE_LIMIT",
    "Activation",
    "BuildError",
    "BuiltBundle",
    "Bundle",
    "BundleError",
    "BundleManifest",
    "BundleSource",
    "BundleStatus",
    "DirectorySource",
    "Failure",
    "FetchError",
    "Fetched",
    "FileSource",
    "HttpSource",
    "PrivateKey",
    "PublicKey",
    "SignatureError",
    "SignedBundle",
    "SourceState",
    "VerifiedBundle",
    "build_bundle",
    "fsync_directory",
    "git_revision",
    "load_bundle",
    "load_private_key",
    "load_public_key",
    "load_public_keys",
    "open_source",
    "read_directory",
    "sign_bundle",
    "verify_bundle",
    "write_file_atomically",
]
