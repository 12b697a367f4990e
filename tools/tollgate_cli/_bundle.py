"""Commands for bundles: `tollgate build`, `tollgate sign`, `tollgate verify`."""

from __future__ import annotations

import argparse
import sys

from tollgate_cli._common import EXIT_ERROR

ORDER = 40  # position in `tollgate --help`
COMMANDS = ("build", "sign", "verify")  # the top-level commands register() adds


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build = sub.add_parser(
        "build", help="build a policy directory into an OPA bundle .tar.gz (reproducible)",
        description="Build a policy directory into an OPA bundle: .manifest, the .rego files (tests left out) "
                    "and data.json/data.yaml at their paths. The same sources and revision give the same bytes.")
    build.add_argument("path", help="the policy directory, e.g. rego")
    build.add_argument("-o", "--output", required=True, metavar="FILE", help="the bundle to write, e.g. bundle.tar.gz")
    build.add_argument("--revision", metavar="REV",
                       help="the bundle revision (default: the git commit of PATH, with -dirty if it has changes)")
    build.add_argument("--include-tests", action="store_true",
                       help="also include the *_test.rego files (never in a bundle that is promoted)")
    build.add_argument("--tests-output", metavar="FILE",
                       help="also write the test bundle beside it: the same sources and revision, tests included, "
                            "for the promotion tests gate (promote --tests FILE)")
    build.add_argument("--sequence", type=int, metavar="N",
                       help="orders revisions in the signed manifest (default: the git commit time)")
    build.set_defaults(func=_build)

    sign = sub.add_parser(
        "sign", help="sign a bundle: write .signatures.json (OPA's format) into it",
        description="Sign a bundle .tar.gz in place (or into --output): one JWT over the hashes of all its files, "
                    "with the key ID in its header. An earlier signature is replaced.")
    sign.add_argument("file", help="the bundle .tar.gz")
    sign.add_argument("--key", required=True, metavar="KEY.pem", help="the PEM private key (RSA or EC P-256)")
    sign.add_argument("--kid", required=True, metavar="ID", help="the key ID verifiers know the public key by")
    sign.add_argument("--alg", choices=("RS256", "ES256"),
                      help="the signing algorithm (default: RS256 for an RSA key, ES256 for an EC key)")
    sign.add_argument("--scope", default="", help="a scope claim (OPA checks it against the key's configured scope)")
    sign.add_argument("-o", "--output", metavar="FILE", help="write the signed bundle here instead of in place")
    sign.set_defaults(func=_sign)

    verify = sub.add_parser(
        "verify", help="verify a bundle's signature against trusted public keys",
        description="Verify a bundle's .signatures.json: the JWT against the trusted key its kid names, and every "
                    "file of the bundle against its signed hash. Exit 0 when it holds, 1 when it does not.")
    verify.add_argument("file", help="the bundle .tar.gz")
    verify.add_argument("--keys", required=True, metavar="DIR",
                        help="the trusted public keys, one KID.pem per key (several may be trusted at once)")
    verify.add_argument("--scope", default="", help="the scope the bundle must be signed for (default: none)")
    verify.set_defaults(func=_verify)


def _build(args: argparse.Namespace) -> int:
    from tollgate.bundle import BundleError, build_bundle

    try:
        built = [build_bundle(args.path, args.output, revision=args.revision, include_tests=args.include_tests,
                              sequence=args.sequence)]
        if args.tests_output:  # the same revision and sequence as the bundle, so the gate can match the two
            built.append(build_bundle(args.path, args.tests_output, revision=built[0].revision, include_tests=True,
                                      sequence=args.sequence))
    except BundleError as exc:
        print(f"tollgate build: {exc}", file=sys.stderr)
        return EXIT_ERROR
    for one in built:
        print(f"built {one.path}  revision={one.revision}  sha256={one.sha256}  "
              f"roots={','.join(one.roots)}  files={len(one.files)}")
    return 0


def _sign(args: argparse.Namespace) -> int:
    from tollgate.bundle import BundleError, load_private_key, sign_bundle

    try:
        key = load_private_key(args.key)
        signed = sign_bundle(args.file, key, keyid=args.kid, algorithm=args.alg, scope=args.scope,
                             output=args.output)
    except BundleError as exc:
        print(f"tollgate sign: {exc}", file=sys.stderr)
        return EXIT_ERROR
    scope = f"  scope={signed.scope}" if signed.scope else ""
    print(f"signed {signed.path}  kid={signed.keyid}  alg={signed.algorithm}{scope}  files={len(signed.files)}  "
          f"sha256={signed.sha256}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from tollgate.bundle import BundleError, load_public_keys, verify_bundle

    try:
        verified = verify_bundle(args.file, load_public_keys(args.keys), scope=args.scope)
    except BundleError as exc:
        print(f"tollgate verify: {exc}", file=sys.stderr)
        return EXIT_ERROR
    scope = f"  scope={verified.scope}" if verified.scope else ""
    print(f"verified {verified.source}  revision={verified.revision}  kid={verified.keyid}  "
          f"alg={verified.algorithm}{scope}  files={len(verified.files)}")
    return 0
