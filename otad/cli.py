"""The command line: parse arguments, call the module that does the work, print the result.

No logic lives here beyond turning flags into config overrides and results into text. An
OtadError becomes one line on stderr and exit status 1 (2 for configuration and usage
errors); a traceback is printed only with --debug. Modules are imported lazily so that
`otad --help` stays fast on a Pi Zero.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Callable, Dict, Optional, Sequence

from otad import __version__

DEFAULT_CONFIG = "/etc/otad/otad.conf"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otad", description="Over-the-air updates for A/B Linux devices.")
    parser.add_argument("--version", action="version", version=f"otad {__version__}")
    parser.add_argument("--config", metavar="FILE",
                        help=f"configuration file (default: {DEFAULT_CONFIG} if it exists)")
    parser.add_argument("--debug", action="store_true", help="print tracebacks and debug logs")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    _add_install(commands)
    _add_info(commands)
    _add_env(commands)
    return parser


def _add_bundle_trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", "--key", metavar="FILE", help="trusted CA certificates (CMS) or public key (RSA)")
    p.add_argument("--signature", choices=("cms", "rsa"), help="signature method (default: cms)")
    p.add_argument("--cert-purpose", choices=("emailProtection", "codeSigning", "any"),
                   help="required purpose of the signer certificate (default: emailProtection)")
    p.add_argument("--forced-signer-name", metavar="CN", help="the signer's common name must equal CN")
    p.add_argument("--insecure-allow-unsigned", action="store_true",
                   help="accept bundles without a valid signature (development only)")


def _add_install(commands: Any) -> None:
    p = commands.add_parser("install", help="install a .swu bundle from a file ('-' for stdin)")
    p.add_argument("bundle", metavar="BUNDLE")
    _add_bundle_trust_options(p)
    p.add_argument("-e", "--select", metavar="SET,MODE", help="software set and mode, e.g. stable,copy2")
    p.add_argument("-H", "--hwrevision", metavar="BOARD:REV", help="hardware identity (default: /etc/hwrevision)")
    p.add_argument("-n", "--dry-run", action="store_true", help="verify everything, write nothing")
    p.add_argument("--device-dir", metavar="DIR", help="directory standing for /dev (tests, simulators)")
    p.add_argument("--no-hw-check", action="store_true", help="skip the hardware-compatibility check")
    p.set_defaults(run=_cmd_install)


def _add_info(commands: Any) -> None:
    p = commands.add_parser("info", help="show what a bundle contains and whether it verifies")
    p.add_argument("bundle", metavar="BUNDLE")
    _add_bundle_trust_options(p)
    p.add_argument("-H", "--hwrevision", metavar="BOARD:REV", help="show the sections for this board")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_cmd_info)


def _add_env(commands: Any) -> None:
    p = commands.add_parser("env", help="print or set U-Boot variables (like fw_printenv / fw_setenv)")
    sub = p.add_subparsers(dest="env_command", metavar="print|set")
    sub.required = True
    pr = sub.add_parser("print", help="print variables (all, or the NAMEs given)")
    pr.add_argument("-c", "--config-env", metavar="FW_ENV_CONFIG", help="fw_env.config (default: from otad.conf)")
    pr.add_argument("-n", "--noheader", action="store_true", help="print the value only (one NAME)")
    pr.add_argument("names", nargs="*", metavar="NAME")
    pr.set_defaults(run=_cmd_env_print)
    st = sub.add_parser("set", help="set NAME=VALUE (NAME= deletes), all in one atomic write")
    st.add_argument("-c", "--config-env", metavar="FW_ENV_CONFIG", help="fw_env.config (default: from otad.conf)")
    st.add_argument("-s", "--script", metavar="FILE", help="read 'name value' lines from FILE ('-' = stdin)")
    st.add_argument("-f", "--defenv", metavar="FILE",
                    help="start from this default env (name=value lines) if no copy is valid")
    st.add_argument("assignments", nargs="*", metavar="NAME=VALUE")
    st.set_defaults(run=_cmd_env_set)


def _load_config(args: argparse.Namespace) -> Any:
    from otad import config

    path = args.config if args.config else (DEFAULT_CONFIG if os.path.exists(DEFAULT_CONFIG) else None)
    cfg = config.load(path)
    install: Dict[str, Any] = {}
    for flag, key in (("key", "trust_file"), ("signature", "signature"), ("cert_purpose", "cert_purpose"),
                      ("forced_signer_name", "forced_signer_name")):
        if getattr(args, flag, None):
            install[key] = getattr(args, flag)
    if getattr(args, "insecure_allow_unsigned", False):
        install["allow_unsigned"] = True
    if getattr(args, "no_hw_check", False):
        install["check_hardware"] = False
    if getattr(args, "select", None):
        install["selection"] = args.select
    system: Dict[str, Any] = {}
    if getattr(args, "hwrevision", None):
        system["hardware"] = args.hwrevision
    if getattr(args, "device_dir", None):
        system["device_dir"] = args.device_dir
    return cfg.replace("install", **install).replace("system", **system)


def _open_bundle(path: str) -> Any:
    from otad.errors import InstallError

    if path == "-":
        return sys.stdin.buffer, None
    try:
        f = open(path, "rb")
    except OSError as exc:
        raise InstallError(f"cannot open bundle: {exc.strerror}", path) from exc
    return f, os.fstat(f.fileno()).st_size


def _cmd_install(args: argparse.Namespace) -> int:
    from otad.console import ProgressDisplay, human_bytes
    from otad.install.installer import install_bundle
    from otad.install.options import make_request, status_file
    from otad.install.status import TargetStatusStore

    cfg = _load_config(args)
    request = make_request(cfg, dry_run=args.dry_run)
    status = TargetStatusStore(None if args.dry_run else status_file(cfg))
    source, size = _open_bundle(args.bundle)
    with source:
        result = install_bundle(source, request, name=args.bundle, total_bytes=size,
                                progress=ProgressDisplay(), status=status)
    verb = "verified (dry run, nothing written)" if result.dry_run else "installed"
    for image in result.images:
        print(f"{image.name}: {human_bytes(image.written_bytes)} {verb}, sha256 {image.sha256}")
    print(f"{args.bundle}: version {result.manifest.version} {verb} in {result.seconds:.1f} s")
    if result.bootenv and not result.dry_run:
        print(f"note: bootenv ({len(result.bootenv)} variables) not applied: no bootloader configured",
              file=sys.stderr)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from otad.install.options import make_verifier
    from otad.swu.info import inspect_bundle

    cfg = _load_config(args)
    verifier = make_verifier(cfg) if os.path.exists(cfg.install.trust_file) else None
    board = cfg.system.hardware.split(":")[0] if cfg.system.hardware else None
    source, _size = _open_bundle(args.bundle)
    with source:
        info = inspect_bundle(source, name=args.bundle, verifier=verifier, board=board)
    if verifier is None:
        print(f"note: signature not checked: trust file {cfg.install.trust_file} not found (use -k)",
              file=sys.stderr)
    if args.json:
        print(json.dumps(info.to_dict(), indent=2, default=str))
    else:
        _print_info(info)
    return 0 if info.ok else 1


def _env(args: argparse.Namespace) -> Any:
    from otad.boot.envcmd import open_env

    cfg = _load_config(args)
    return open_env(args.config_env or cfg.bootloader.fw_env_config, cfg.bootloader.lock_file)


def _cmd_env_print(args: argparse.Namespace) -> int:
    from otad.boot.envcmd import print_variables

    result = print_variables(_env(args), args.names, value_only=args.noheader)
    for line in result.lines:
        print(line)
    return 0


def _cmd_env_set(args: argparse.Namespace) -> int:
    from otad.boot.envcmd import parse_assignments, read_default_env, read_script, set_variables

    changes = read_script(args.script) if args.script else {}
    changes.update(parse_assignments(args.assignments))
    default = read_default_env(args.defenv) if args.defenv else None
    set_variables(_env(args), changes, default)
    return 0


def _print_info(info: Any) -> None:
    from otad.console import human_bytes

    print(f"bundle:      {info.name}")
    print(f"version:     {info.version}")
    if info.description:
        print(f"description: {info.description}")
    signer = f" (signer {info.signer.subject})" if info.signer and info.signer.subject else ""
    print(f"signature:   {info.signature}{signer}")
    for sel in info.selections:
        label = ",".join(sel.selection) if sel.selection else "(no selection)"
        board = f" board {sel.board}" if sel.board else ""
        hw = ", ".join(sel.hardware_compatibility) or "-"
        print(f"selection {label}{board}: version {sel.version}, hardware {hw}")
        for e in sel.entries:
            flags = [f for f in (e.compressed, "encrypted" if e.encrypted else None) if f]
            check = {True: "hash ok", False: "HASH MISMATCH", None: "missing" if e.stored_bytes is None else "no hash"}
            print(f"  {e.kind} {e.filename} [{e.type}{', ' + ', '.join(flags) if flags else ''}] -> "
                  f"{e.target or '-'}  {human_bytes(e.stored_bytes)}  {check[e.hash_ok]}")
        for name, value in sel.bootenv.items():
            print(f"  bootenv {name}={value}")
    for problem in info.problems:
        print(f"problem: {problem}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from otad.console import setup_logging
    from otad.errors import OtadError

    setup_logging(args.verbose + (1 if args.debug else 0), args.quiet)
    run: Callable[[argparse.Namespace], int] = args.run
    try:
        return run(args)
    except OtadError as exc:
        if args.debug:
            import traceback

            traceback.print_exc()
        print(f"otad: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("otad: interrupted", file=sys.stderr)
        return 130
