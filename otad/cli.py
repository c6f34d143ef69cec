"""The command line: parse arguments, call the module that does the work, print the result.

No logic lives here beyond turning flags into config overrides and results into text. An
OtadError becomes one line on stderr and its exit status (README: 1, 2 for configuration and
usage errors, 75 busy); SIGINT, SIGTERM and SIGHUP one line and 130. A traceback is printed
only with --debug. Commands that write hold the writer lock (otad.lock) around their work.
Modules are imported lazily so that `otad --help` stays fast on a Pi Zero.
"""

from __future__ import annotations

import argparse
import os
import sys

from otad import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:  # annotations only: importing `typing` is a large share of `otad --help` on a Pi Zero
    from typing import Any, Callable, Dict, Optional, Sequence, Tuple

DEFAULT_CONFIG = "/etc/otad/otad.conf"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="otad", description="Over-the-air updates for A/B Linux devices.",
                                     formatter_class=_HelpFormatter)
    parser.add_argument("--version", action="version", version=f"otad {__version__}")
    _add_global_options(parser)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_SubParser)
    commands.required = True
    for name, text, arguments in _COMMANDS:
        # no --config after `mkswu`: there -c/--config is swugenerator's variables file
        commands.add_parser(name, help=text, add_later=arguments, config_option=name != "mkswu")
    return parser


def _add_global_options(p: argparse.ArgumentParser, *, after_command: bool = False, config: bool = True) -> None:
    """--config, --debug, -v, -q: before the sub-command, and after it too. There their default
    is SUPPRESS, so that an option given only before the sub-command keeps its value."""
    unset: Dict[str, Any] = {"default": argparse.SUPPRESS} if after_command else {}
    if config:
        p.add_argument("--config", metavar="FILE", help=f"configuration file (default: {DEFAULT_CONFIG} if it exists)",
                       **unset)
    p.add_argument("--debug", action="store_true", help="print tracebacks and debug logs", **unset)
    p.add_argument("-v", "--verbose", action="count", help="more log output", **(unset or {"default": 0}))
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors", **unset)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, without textwrap for a text that fits on its line: wrapping the
    help lines was half of `otad --help` on a Pi Zero. The output is the same as textwrap's."""

    def _split_lines(self, text: str, width: int) -> Any:
        one = self._whitespace_matcher.sub(" ", text).strip()
        if len(one) <= width:
            return [one] if one else []
        return super()._split_lines(text, width)

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        one = indent + self._whitespace_matcher.sub(" ", text).strip()
        if len(one) <= width and one.strip():
            return one
        return super()._fill_text(text, width, indent)


class _SubParser(argparse.ArgumentParser):
    """A sub-command's parser: takes the global options too (`config_option=False` where the
    command has its own --config). Those and its own arguments (`add_later`) are added when it
    is first used: building the whole command line costs a Pi Zero little more than the command
    names (argparse makes a help formatter for every argument), and imports no command's module.

    `dash_words` names a positional list whose words may start with '-' only after '--', as with
    fw_setenv, whose getopt would take `-1` for an option, drop it and delete the variable."""

    def __init__(self, *args: Any, add_later: Optional[Callable[[argparse.ArgumentParser], None]] = None,
                 config_option: bool = True, dash_words: Optional[str] = None, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)
        self._add_later = add_later
        self._config_option: Optional[bool] = config_option
        self._dash_words = dash_words
        if add_later is None:  # its arguments come next: the global options first, as in every usage line
            self._take_global_options()

    def _take_global_options(self) -> None:
        if self._config_option is not None:
            _add_global_options(self, after_command=True, config=self._config_option)
            self._config_option = None

    def complete(self) -> None:
        """Add the arguments not added yet (parsing does it first)."""
        self._take_global_options()
        if self._add_later is not None:
            add, self._add_later = self._add_later, None
            add(self)

    def parse_known_args(self, args: Any = None, namespace: Any = None) -> Any:
        self.complete()
        if self._dash_words is None or args is None:
            return super().parse_known_args(args, namespace)
        args = list(args)
        cut = args.index("--") if "--" in args else len(args)
        parsed, extras = super().parse_known_args(args[:cut], namespace)
        words = getattr(parsed, self._dash_words)
        for word in words + extras:
            if word.startswith("-") and word != "-":
                self.error(f"{word!r} is not an option here")
        setattr(parsed, self._dash_words, words + args[cut + 1:])
        return parsed, extras

    def error(self, message: str) -> Any:
        if self._dash_words is not None:
            message += (f" (a VALUE that starts with '-' goes after '--', as with fw_setenv: "
                        f"{self.prog} -- bootdelay -1)")
        super().error(message)


def _add_bundle_trust_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-k", "--key", metavar="FILE", help="trusted CA certificates (CMS) or public key (RSA)")
    p.add_argument("--signature", choices=("cms", "rsa"), help="signature method (default: cms)")
    p.add_argument("--cert-purpose", choices=("emailProtection", "codeSigning", "any"),
                   help="required purpose of the signer certificate (default: emailProtection)")
    p.add_argument("--forced-signer-name", metavar="CN", help="the signer's common name must equal CN")
    p.add_argument("--insecure-allow-unsigned", action="store_true",
                   help="accept bundles without a valid signature (development only)")


def _install_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE")
    _add_bundle_trust_options(p)
    _add_planning_options(p)
    p.add_argument("-n", "--dry-run", action="store_true", help="verify everything, write nothing")
    p.add_argument("--no-switch", action="store_true",
                   help="write the inactive slot but do not arm it for the next boot")
    p.set_defaults(run=_cmd_install)


def _add_planning_options(p: argparse.ArgumentParser) -> None:
    """What decides whether a bundle installs here: `install` and `info` take the same."""
    p.add_argument("-e", "--select", metavar="SET,MODE", help="software set and mode, e.g. stable,copy2")
    p.add_argument("-H", "--hwrevision", metavar="BOARD:REV", help="hardware identity (default: /etc/hwrevision)")
    p.add_argument("--device-dir", metavar="DIR", help="directory standing for /dev (tests, simulators)")
    p.add_argument("--no-hw-check", action="store_true", help="skip the hardware-compatibility check")
    p.add_argument("-K", "--key-aes", metavar="FILE",
                   help="AES key file for encrypted images: '<hex key> <hex iv>' (or key=/iv= lines)")
    p.add_argument("-N", "--min-version", metavar="V", help="refuse a bundle whose version is lower than V")
    p.add_argument("--max-version", metavar="V", help="refuse a bundle whose version is higher than V")
    p.add_argument("-R", "--no-reinstall", metavar="V", help="refuse a bundle whose version string is exactly V")


def _info_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("bundle", metavar="BUNDLE")
    _add_bundle_trust_options(p)
    _add_planning_options(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_cmd_info)


def _status_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_cmd_status)


def _confirm_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-reboot", action="store_true", help="never run the reboot command, only say so")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(run=_cmd_confirm)


def _mark_bad_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("slot", nargs="?", metavar="SLOT", help="slot name (default: the booted slot)")
    p.add_argument("--no-reboot", action="store_true", help="never run the reboot command, only say so")
    p.set_defaults(run=_cmd_mark_bad)


def _run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--once", action="store_true", help="one poll cycle, then exit")
    p.add_argument("--no-reboot", action="store_true", help="never run the reboot command (tests)")
    p.add_argument("--syslog", action="store_true", help="log to syslog as well as stderr")
    p.set_defaults(run=_cmd_run)


def _mkswu_arguments(p: argparse.ArgumentParser) -> None:
    from otad.mkswu import cli as mkswu  # lazy: only `otad mkswu` needs it (~0.3 MB RSS in install, ~6 MB in --help)

    mkswu.add_arguments(p)
    p.set_defaults(run=mkswu.run)


def _env_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="env_command", metavar="print|set", parser_class=_SubParser)
    sub.required = True
    pr = sub.add_parser("print", help="print variables (all, or the NAMEs given)")
    pr.add_argument("-c", "--config-env", metavar="FW_ENV_CONFIG", help="fw_env.config (default: from otad.conf)")
    pr.add_argument("-n", "--noheader", action="store_true", help="print the value only (one NAME)")
    pr.add_argument("names", nargs="*", metavar="NAME")
    pr.set_defaults(run=_cmd_env_print)
    st = sub.add_parser("set", dash_words="assignments",
                        help="NAME VALUE ... as fw_setenv (a last NAME alone deletes), or NAME=VALUE ...; one write",
                        description="Set U-Boot variables in one atomic write, with the arguments of Debian's "
                                    "fw_setenv (libubootenv): NAME VALUE pairs, a trailing NAME without VALUE "
                                    "deletes it, NAME \"\" keeps it empty. Or, when every argument has an '=', "
                                    "NAME=VALUE ... (NAME= deletes). VALUEs starting with '-' go after '--'.")
    st.add_argument("-c", "--config-env", metavar="FW_ENV_CONFIG", help="fw_env.config (default: from otad.conf)")
    st.add_argument("-s", "--script", metavar="FILE",
                    help="read 'name=value' lines from FILE ('-' = stdin; name= deletes), as fw_setenv -s")
    st.add_argument("-f", "--defenv", metavar="FILE",
                    help="start from this default env (name=value lines) if no copy is valid")
    st.add_argument("assignments", nargs="*", metavar="NAME [VALUE]")
    st.set_defaults(run=_cmd_env_set)


def _state_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="state_command", metavar="reset", parser_class=_SubParser)
    sub.required = True
    reset = sub.add_parser("reset", help="set aside the state files otad cannot read (as FILE.corrupt)",
                           description="Each of state.json, actions.json and outbox.json whose content otad "
                                       "cannot read is renamed to FILE.corrupt and starts empty; readable files "
                                       "are left as they are. Holds the writer lock.")
    reset.set_defaults(run=_cmd_state_reset)


# Each command: its name, its line in `otad --help`, and what adds its arguments when it is parsed.
_COMMANDS: Tuple[Tuple[str, str, Callable[[argparse.ArgumentParser], None]], ...] = (
    ("install", "install a .swu bundle from a file ('-' for stdin)", _install_arguments),
    ("info", "show what a bundle contains and whether `install` would take it here", _info_arguments),
    ("env", "print or set U-Boot variables (like fw_printenv / fw_setenv)", _env_arguments),
    ("status", "booted slot, each slot's state, pending trial, env values", _status_arguments),
    ("state", "otad's own state files (reset: set unreadable ones aside)", _state_arguments),
    ("confirm", "after a boot: commit a healthy trial slot or record the fallback", _confirm_arguments),
    ("mark-good", "after a boot: commit a healthy trial slot or record the fallback", _confirm_arguments),
    ("mark-bad", "give up on a slot now (default: the running one) and switch back", _mark_bad_arguments),
    ("run", "the daemon: poll hawkBit, install, report (see hawkbit in otad.conf)", _run_arguments),
    ("mkswu", "build a signed .swu bundle from a sw-description template (build host)", _mkswu_arguments),
)


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
    for flag, key in (("key_aes", "aes_key_file"), ("min_version", "min_version"), ("max_version", "max_version"),
                      ("no_reinstall", "no_reinstall")):
        if getattr(args, flag, None):
            install[key] = getattr(args, flag)
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
    from otad import update
    from otad.console import ProgressDisplay, human_bytes

    from otad.boot.watchdog import ProgressPetter
    from otad.progress import fan_out

    cfg = _load_config(args)
    # A dry run writes nothing, so it neither takes the lock nor waits for it.
    with _writer(cfg, "installing", needed=not args.dry_run) as writer:
        source, size = _open_bundle(args.bundle)
        with source, update.open_watchdog(cfg, unless_held=True) as watchdog:
            progress = fan_out([ProgressDisplay(), ProgressPetter(watchdog)])
            done = update.install(cfg, source, name=args.bundle, writer=writer, total_bytes=size, progress=progress,
                                  dry_run=args.dry_run, no_switch=args.no_switch)
    result = done.install
    verb = "verified (dry run, nothing written)" if result.dry_run else "installed"
    for image in result.images:
        print(f"{image.name}: {human_bytes(image.written_bytes)} {verb}, sha256 {image.sha256}")
    for delta in result.deltas:
        print(f"{delta.name}: delta into {delta.target}: {delta.summary()}")
    where = f" into slot {done.target.name}" if done.target else ""
    print(f"{args.bundle}: version {result.manifest.version} {verb}{where} in {result.seconds:.2f} s")
    if done.state is not None and done.target is not None:
        print(f"slot {done.target.name} armed for a trial boot: reboot to try it; "
              f"`otad confirm` after the boot commits it")
    elif done.target is not None and not result.dry_run:
        print(f"slot {done.target.name} not armed (--no-switch)")
    elif result.bootenv and not result.dry_run:
        print(f"bootenv: {', '.join(v.name for v in result.bootenv)} applied in one env write")
    return 0


def _writer(cfg: Any, activity: str, *, needed: bool = True, create: bool = True) -> Any:
    """The writer lock held for a command's work (BusyError at once if another otad holds it)."""
    import contextlib

    from otad.lock import WriterLock

    if not needed:
        return contextlib.nullcontext()
    return WriterLock(cfg.system.state_dir).acquire(activity, create=create)


def _say(line: str) -> None:
    """One line on stdout now, before whatever comes next (a reboot) can end the process."""
    print(line, flush=True)


def _cmd_run(args: argparse.Namespace) -> int:
    from otad.console import add_syslog
    from otad.hawkbit.agent import Agent, AgentOptions

    if args.syslog:
        add_syslog()
    return Agent(_load_config(args), AgentOptions(once=args.once, reboot=not args.no_reboot)).run()


def _cmd_status(args: argparse.Namespace) -> int:
    from otad.report import status_report

    report = status_report(_load_config(args))
    if args.json:
        import json

        print(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        _print_status(report)
    return 0


def _print_status(report: Any) -> None:
    from otad.console import human_bytes

    slots, daemon, saved = report.slots, report.daemon, report.resume
    print(f"booted:  {slots.booted or 'unknown'}" + (f" ({slots.booted_evidence})" if slots.booted_evidence else ""))
    print(f"next:    {slots.env_slot or 'unknown'}")
    for slot in slots.slots:
        version = f" version {slot.installed_version}" if slot.installed_version else ""
        marks = "".join(m for m, on in ((" [booted]", slot.booted), (" [next]", slot.next_boot)) if on)
        note = f" ({slot.note})" if slot.note else ""
        print(f"slot {slot.name} {slot.device}: {slot.state}{note}{version}{marks}")
    if slots.pending_trial:
        print("trial:   " + ", ".join(f"{k}={v}" for k, v in slots.pending_trial.items() if v is not None))
    if slots.last_result:
        r = slots.last_result
        print(f"last:    {r.outcome.value} slot {r.slot} version {r.version or '-'}"
              + (f": {r.reason}" if r.reason else ""))
    print("env:     " + " ".join(f"{k}={v if v is not None else '-'}" for k, v in slots.env.items()))
    if report.writer is not None:
        done = f", {report.writer.percent} %" if report.writer.percent is not None else ""
        print(f"writer:  {report.writer.describe()}{done}")
    if daemon is None:
        print("daemon:  not started" if report.daemon_problem is None else "daemon:  unknown")
    else:
        parts = [daemon.phase.value + (f" action {daemon.action_id}" if daemon.action_id else "")
                 + (f" version {daemon.version}" if daemon.version else "")]
        if daemon.phase.transferring:
            of = f" of {human_bytes(daemon.bytes_total)}" if daemon.bytes_total else ""
            pct = f" ({daemon.bytes_done * 100 // daemon.bytes_total}%)" if daemon.bytes_total else ""
            parts.append(f"{human_bytes(daemon.bytes_done)}{of}{pct}")
            if daemon.rate_bps:
                parts.append(f"{human_bytes(int(daemon.rate_bps))}/s")
        if report.next_poll_in_s is not None:
            parts.append(f"next poll in {report.next_poll_in_s:.0f} s")
        if daemon.last_error:
            parts.append(f"last error: {daemon.last_error}")
        print("daemon:  " + ", ".join(parts))
    if saved is not None:
        print(f"resume:  action {saved.action_id} {saved.artifact} goes on from {human_bytes(saved.offset)} "
              f"of {human_bytes(saved.size)}")
    for warning in report.warnings:
        print(f"warning: {warning}")


def _cmd_confirm(args: argparse.Namespace) -> int:
    from otad import update

    cfg = _load_config(args)
    with _writer(cfg, "confirming the boot") as writer:
        outcome = update.confirm_boot(cfg, writer=writer)
    if args.json:
        import json

        print(json.dumps(outcome.to_dict(), indent=2))
    else:
        print(f"{outcome.verdict.value}: {outcome.message}")
    update.reboot_if_asked(cfg, outcome.reboot, allowed=not args.no_reboot, say=_say)
    return 0


def _cmd_mark_bad(args: argparse.Namespace) -> int:
    from otad import update

    cfg = _load_config(args)
    with _writer(cfg, "marking a slot bad") as writer:
        outcome = update.mark_bad_now(cfg, args.slot, writer=writer)
    print(outcome.message)
    update.reboot_if_asked(cfg, outcome.reboot, allowed=not args.no_reboot, say=_say)
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from otad import update
    from otad.install.options import info_verifier
    from otad.swu.info import inspect_bundle

    cfg = _load_config(args)
    verifier, unchecked = info_verifier(cfg)
    board = cfg.system.hardware.split(":")[0] if cfg.system.hardware else None
    source, _size = _open_bundle(args.bundle)
    previews = update.DeltaPreviews(cfg, name=args.bundle)
    with source:
        info = inspect_bundle(source, name=args.bundle, verifier=verifier, board=board, plan=previews.plan,
                              delta=previews.describer)
    if unchecked:
        print(f"note: {unchecked}", file=sys.stderr)
    if args.json:
        import json

        print(json.dumps(info.to_dict(), indent=2, default=str))
    else:
        _print_info(info)
    return info.exit_code


def _env(args: argparse.Namespace, cfg: Any = None) -> Any:
    from otad.boot.envcmd import open_env

    cfg = cfg or _load_config(args)
    return open_env(args.config_env or cfg.bootloader.fw_env_config, cfg.bootloader.lock_file)


def _cmd_env_print(args: argparse.Namespace) -> int:
    from otad.boot.envcmd import print_variables

    result = print_variables(_env(args), args.names, value_only=args.noheader)
    for line in result.lines:
        print(line)
    return 0


def _cmd_env_set(args: argparse.Namespace) -> int:
    from otad.boot.envcmd import read_default_env, requested_changes, set_variables

    changes = requested_changes(args.assignments, args.script)
    default = read_default_env(args.defenv) if args.defenv else None
    cfg = _load_config(args)
    with _writer(cfg, "setting U-Boot env variables", create=False):
        set_variables(_env(args, cfg), changes, default)
    return 0


def _cmd_state_reset(args: argparse.Namespace) -> int:
    from otad.reset import reset_state

    cfg = _load_config(args)
    with _writer(cfg, "resetting state files") as writer:
        result = reset_state(cfg, writer=writer)
    for item in result.set_aside:
        print(f"{item.path}: unreadable, moved to {item.aside}; {item.consequence}")
    if not result.set_aside:
        print(f"nothing to reset: {', '.join(result.readable)} can be read")
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
            details = [f"encrypted: yes, {'own ivt' if e.ivt else 'IV from the key file'}" if e.encrypted
                       else "encrypted: no"]
            if e.version_gate:
                details.append(f"{e.version_gate}: {e.name} {e.version} (skipped unless sw-versions allows)")
            elif e.name or e.version:
                details.append(f"component {e.name or '-'} version {e.version or '-'} (not gated)")
            print("      " + "; ".join(details))
            if e.plan:
                print(f"      delta: {e.plan}")
        for name, value in sel.bootenv.items():
            print(f"  bootenv {name}={value}")
    for problem in info.problems:
        print(f"problem: {problem}")
    if info.refused:
        print(f"would be refused: {info.refused}")
    else:
        print("would fail while writing: see the problems above" if info.problems else "would install: yes")


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from otad.console import report_errors, setup_logging

    setup_logging(args.verbose + (1 if args.debug else 0), args.quiet)
    from otad.signals import handled

    run: Callable[[argparse.Namespace], int] = args.run
    try:
        with handled():
            return report_errors("otad", args.debug, lambda: run(args))
    except BrokenPipeError:
        # the reader of our output went away (`otad status | head`): not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
