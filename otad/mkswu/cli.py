"""mkswu's command line: its options (named like swugenerator's), `run` as `otad mkswu` calls
it, and `main` for scripts/mkswu. Importing it stays cheap: otad's command line builds every
sub-command's parser on each run, so cryptography, zstandard and libconf load on first use.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import Optional, Sequence

from otad.mkswu.build import FORMATS, BuildOptions, build
from otad.mkswu.delta import COMPATIBLE, FINE, FINE_KIB, LAYOUTS, SELF_CONTAINED, DeltaOptions, Profile, parse_profile
from otad.mkswu.signing import SIGN_FORMS, load_signer
from otad.mkswu.staging import ZSTD_FRAME_MIB
from otad.mkswu.template import load_variables


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """mkswu's options, named like swugenerator's where they mean the same."""
    parser.add_argument("-s", "--sw-description", required=True, metavar="TEMPLATE",
                        help="sw-description template (libconfig)")
    parser.add_argument("-a", "--artifactory", action="append", metavar="DIR[,DIR...]",
                        help="where artifacts are searched, in order (repeatable; default: .)")
    parser.add_argument("-o", "--swu-file", required=True, metavar="OUT.swu", help="the bundle to write")
    parser.add_argument("-k", "--sign", metavar="SPEC",
                        help=f"sign sw-description: {SIGN_FORMS} (PEM files; default: unsigned)")
    parser.add_argument("-K", "--encryption-key-file", metavar="FILE",
                        help="AES key for entries with encrypted = true: the device's '<hex key> <hex iv>' "
                             "file or swugenerator's key=/iv= lines (32/48/64 hex digits: AES-128/192/256); "
                             "every artifact gets its own random ivt")
    parser.add_argument("-n", "--no-compress", action="store_true",
                        help="store artifacts as found (already compressed); names stay as written")
    parser.add_argument("-c", "--config", dest="variables_file", metavar="FILE",
                        help='swugenerator configuration: variables = { NAME = "value"; } for @@NAME@@')
    parser.add_argument("--format", choices=FORMATS, default="crc",
                        help="cpio format (default: crc, as swugenerator)")
    parser.add_argument("--zstd-frame-mib", type=_frame_mib, default=ZSTD_FRAME_MIB, metavar="N",
                        help=f"start a new zstd frame every N MiB of input, where an interrupted download can "
                             f"resume (default: {ZSTD_FRAME_MIB}; 0: one frame, as the zstd CLI)")
    parser.add_argument("--delta", type=_profile, default=Profile(COMPATIBLE), metavar="PROFILE",
                        help=f"how `type = \"delta\"` images are chunked: {COMPATIBLE} (libzck's chunks, as zck "
                             f"and swugenerator make them; default) or {FINE}[:KIB] (fixed KIB KiB chunks on "
                             f"4 KiB blocks, default {FINE_KIB}: otad downloads less, SWUpdate more)")
    parser.add_argument("--delta-layout", choices=LAYOUTS, default=SELF_CONTAINED,
                        help="where the chunks go: into the bundle as its last member, with a MODE-full "
                             "selection (self-contained; default), or a .zck beside the bundle for a second "
                             "hawkBit artifact (artifact) or for the static properties.url (url)")


def _frame_mib(text: str) -> int:
    if not text.isdigit() or int(text) > 4096:
        raise argparse.ArgumentTypeError(f"expected 0..4096, got {text!r}")
    return int(text)


def _profile(text: str) -> Profile:
    try:
        return parse_profile(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def options_from_args(args: argparse.Namespace) -> BuildOptions:
    from otad.swu.crypto import load_key_file

    dirs = tuple(d for value in args.artifactory or ["."] for d in value.split(",") if d)
    return BuildOptions(
        template=args.sw_description, output=args.swu_file, artifact_dirs=dirs or (".",),
        signer=load_signer(args.sign) if args.sign else None,
        aes_key=load_key_file(args.encryption_key_file).key if args.encryption_key_file else None,
        fmt=args.format, compress=not args.no_compress,
        variables=load_variables(args.variables_file) if args.variables_file else {},
        zstd_frame_mib=args.zstd_frame_mib, delta=DeltaOptions(args.delta, args.delta_layout),
    )


def run(args: argparse.Namespace) -> int:
    """Build as `args` say and print what was stored; errors are raised as OtadError."""
    from otad.console import human_bytes

    result = build(options_from_args(args))
    for a in result.artifacts:
        how = a.how or ", ".join(filter(None, [a.compression, "encrypted" if a.ivt else ""])) or "as is"
        print(f"{a.member}: {human_bytes(a.size)}, sha256 {a.sha256} ({a.source}, {how})")
    signed = f"signed ({result.signed_by})" if result.signed_by else "NOT signed"
    print(f"{result.output}: {len(result.artifacts)} artifact(s), {human_bytes(result.size)}, {signed}")
    for path in result.zck_files:
        print(f"{path}: {human_bytes(os.path.getsize(path))}, upload it with the bundle")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """`scripts/mkswu` and `python -m otad.mkswu`: one error line, a traceback only with --debug."""
    parser = argparse.ArgumentParser(prog="mkswu", description="Build a .swu bundle from a sw-description "
                                     "template and artifact files (like swugenerator create).")
    add_arguments(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="log each artifact as it is stored")
    parser.add_argument("--debug", action="store_true", help="print tracebacks")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose or args.debug else logging.WARNING,
                        format="mkswu: %(levelname)s: %(message)s", force=True)
    from otad.console import report_errors

    return report_errors("mkswu", args.debug, lambda: run(args))
