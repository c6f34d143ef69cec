"""otad.conf → Config: the shipped example, defaults, and a ConfigError naming file:line for
every unknown name, wrong type and bad value."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Dict, Optional, Tuple

import pytest

from otad import config
from otad.boot.slots import Slot, SlotTable
from otad.config import (
    PI_SLOTS,
    BootloaderConfig,
    Config,
    HealthConfig,
    SlotConfig,
    WatchdogConfig,
)
from otad.errors import ConfigError
from otad.sim.device import SimDevice
from tests.pki import Pki

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "etc" / "otad.conf"

# The Pi layout as one text, one setting per line so that errors have distinct lines.
PI_TEXT = """\
system = {
    state_dir = "/var/lib/otad";
};
bootloader = {
    fw_env_config = "/etc/fw_env.config";
    lock_file = "/var/lock/fw_printenv.lock";
    slot_variable = "rootpart";
    bootlimit = 3;
    cmdline = "/proc/cmdline";
    mountinfo = "/proc/self/mountinfo";
    partuuid_dir = "/dev/disk/by-partuuid";
};
health = {
    timeout_s = 60;
    checks = ( "test -e /etc/os-release", "/usr/libexec/otad/check-network" );
};
slots = (
    { name = "a"; device = "/dev/mmcblk0p2"; boot_value = "2"; selection = "stable,copy1"; },
    { name = "b"; device = "/dev/mmcblk0p3"; boot_value = "3"; selection = "stable,copy2"; }
);
watchdog = {
    enabled = false;
    device = "/dev/watchdog";
    timeout_s = 15;
    nowayout = false;
};
"""


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def error_of(text: str, source: str = "otad.conf") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        config.parse(text, source=source)
    return info.value


# ----------------------------------------------------------------------------- good input


def test_the_shipped_example_parses_to_the_pi_layout() -> None:
    cfg = config.load(str(EXAMPLE))
    assert cfg.source == str(EXAMPLE)
    assert cfg.bootloader == BootloaderConfig()
    assert cfg.slots == PI_SLOTS
    assert cfg.watchdog == WatchdogConfig()
    assert cfg.health.timeout_s == 60 and cfg.health.checks == ("test -e /etc/os-release",)
    assert cfg.system == Config().replace("system", run_dir="/run/otad").system
    assert cfg.system.status_file == "/run/otad/daemon.json"
    assert cfg.install == Config().install


def test_the_brief_layout_parses() -> None:
    cfg = config.parse(PI_TEXT, source="otad.conf")
    assert cfg.bootloader == BootloaderConfig()
    assert cfg.health == HealthConfig(60, ("test -e /etc/os-release", "/usr/libexec/otad/check-network"))
    assert SlotTable.from_config(cfg).slots == (Slot("a", "/dev/mmcblk0p2", "2", ("stable", "copy1")),
                                      Slot("b", "/dev/mmcblk0p3", "3", ("stable", "copy2")))


def test_defaults_have_no_slots_no_checks_and_no_watchdog() -> None:
    cfg = config.load(None)
    assert cfg == Config()
    assert cfg.slots == () and not cfg.ab_enabled
    with pytest.raises(ConfigError, match="no slots configured"):
        SlotTable.from_config(cfg)
    assert cfg.bootloader.bootlimit == 3 and cfg.bootloader.slot_variable == "rootpart"
    assert cfg.health == HealthConfig(60.0, ())
    assert not cfg.watchdog.enabled and cfg.watchdog.timeout_s == 15


def test_sections_may_be_left_out_or_partly_given() -> None:
    cfg = config.parse('bootloader = { bootlimit = 5; };\nwatchdog = { enabled = true; };\n', source="x")
    assert cfg.bootloader == BootloaderConfig(bootlimit=5)
    assert cfg.watchdog == WatchdogConfig(enabled=True)
    assert cfg.slots == ()


def test_other_slot_layouts_and_an_array_of_checks() -> None:
    cfg = config.parse(
        'bootloader = { slot_variable = "mmcpart"; mountinfo = ""; };\n'
        'slots = ( { name = "A"; device = "/dev/sda2"; boot_value = "0"; },\n'
        '          { name = "B"; device = "/dev/sda3"; boot_value = "1"; } );\n'
        'health = { timeout_s = 2.5; checks = [ "true", "test -d /data" ]; };\n', source="x")
    assert cfg.bootloader.mountinfo is None
    assert cfg.slots == (SlotConfig("A", "/dev/sda2", "0"), SlotConfig("B", "/dev/sda3", "1"))
    assert SlotTable.from_config(cfg).slots[0].selection is None
    assert cfg.health == HealthConfig(2.5, ("true", "test -d /data"))


def test_empty_checks_mean_healthy() -> None:
    assert config.parse("health = { checks = ( ); };", source="x").health.checks == ()


def test_a_missing_slot_device_is_not_a_config_error() -> None:
    text = PI_TEXT.replace("/dev/mmcblk0p3", "/dev/does-not-exist")
    assert config.parse(text, source="x").slots[1].device == "/dev/does-not-exist"


def test_replace_from_the_command_line_still_validates() -> None:
    with pytest.raises(ConfigError, match=r"bootloader.bootlimit: expected 1..99, got 0") as info:
        Config().replace("bootloader", bootlimit=0)
    assert info.value.where is None


# ----------------------------------------------------------------------------- bad input


BAD_VALUES = [
    ("bootlimit = 3;", "bootlimit = 0;", "bootloader.bootlimit: expected 1..99, got 0"),
    ("bootlimit = 3;", "bootlimit = 100;", "bootloader.bootlimit: expected 1..99, got 100"),
    ('slot_variable = "rootpart";', 'slot_variable = "bootcount";', "'bootcount' is a bootcount variable"),
    ('slot_variable = "rootpart";', 'slot_variable = "root part";', "expected a plain U-Boot variable name"),
    ('slot_variable = "rootpart";', 'slot_variable = "";', "expected a plain U-Boot variable name"),
    ('fw_env_config = "/etc/fw_env.config";', 'fw_env_config = "";', "bootloader.fw_env_config: expected a path"),
    ('cmdline = "/proc/cmdline";', 'cmdline = "";', "bootloader.cmdline: expected a path"),
    ("    timeout_s = 60;", "    timeout_s = 0;", r"health.timeout_s: expected a number > 0, got 0"),
    ("    timeout_s = 60;", "    timeout_s = -1.5;", r"health.timeout_s: expected a number > 0, got -1.5"),
    ('checks = ( "test -e /etc/os-release",', 'checks = ( " ",', "health.checks: expected non-empty shell commands"),
    ("    timeout_s = 15;", "    timeout_s = 0;", r"watchdog.timeout_s: expected a number > 0, got 0"),
    ('device = "/dev/watchdog";', 'device = "";', "watchdog.device: expected a path"),
    ('device = "/dev/mmcblk0p3";', 'device = "mmcblk0p3";',
     r"slots\[1\].device: expected an absolute path such as '/dev/mmcblk0p2', got 'mmcblk0p3'"),
    ('boot_value = "3";', 'boot_value = "3 4";', r"slots\[1\].boot_value: expected no blanks"),
    ('name = "b";', 'name = "";', r"slots\[1\].name: expected a non-empty text"),
    ('selection = "stable,copy2";', 'selection = "stable";',
     r"slots\[1\].selection: expected SET,MODE \(e.g. stable,copy1\), got 'stable'"),
    ('boot_value = "3";', 'boot_value = "2";', "slots: both slots have the boot value '2'"),
    ('device = "/dev/mmcblk0p3";', 'device = "/dev/mmcblk0p2";', "slots: both slots have the device"),
    ('name = "b";', 'name = "a";', "slots: both slots have the name 'a'"),
]


@pytest.mark.parametrize("good, bad, message", BAD_VALUES, ids=[b for _, b, _ in BAD_VALUES])
def test_bad_values_name_file_and_line(good: str, bad: str, message: str) -> None:
    assert PI_TEXT.count(good) == 1
    text = PI_TEXT.replace(good, bad)
    exc = error_of(text)
    last = text[: text.rindex(bad)].count("\n") + 1  # a duplicate is reported where it repeats
    assert exc.where == f"otad.conf:{last}", str(exc)
    assert re.search(message, exc.what), exc.what


@pytest.mark.parametrize("text, line, message", [
    ('bootloader = {\n  bootlimit = "3";\n};', 2, "bootloader.bootlimit: expected int, got '3'"),
    ("bootloader = {\n  bootlimit = 3.0;\n};", 2, "bootloader.bootlimit: expected int, got 3.0"),
    ("bootloader = {\n  cmdline = 1;\n};", 2, "bootloader.cmdline: expected str, got 1"),
    ("watchdog = {\n  enabled = 1;\n};", 2, "watchdog.enabled: expected bool, got 1"),
    ("watchdog = {\n  timeout_s = true;\n};", 2, "watchdog.timeout_s: expected int, got True"),
    ('health = {\n  timeout_s = "60";\n};', 2, "health.timeout_s: expected float, got '60'"),
    ('health = {\n  checks = "true";\n};', 2, "health.checks: expected a list of strings"),
    ("health = {\n  checks = ( 1 );\n};", 2, "health.checks: expected strings only, got 1"),
    ('health = {\n  checks = ( ( "true" ) );\n};', 2, r"health.checks: expected strings only, got \['true'\]"),
    ('slots = { name = "a"; };', 1, r"slots: expected a list of groups"),
    ('slots = (\n  "a",\n  "b"\n);', 2, r"slots\[0\]: expected a group \{ ... \}, got 'a'"),
    ('slots = (\n  { name = "a"; device = "/dev/x"; boot_value = "1"; },\n  { name = 2; }\n);', 3,
     r"slots\[1\].name: expected str, got 2"),
    ('slots = (\n  { name = "a"; device = "/dev/x"; boot_value = "1"; }\n);', 1,
     "slots: expected exactly 2 slots \\(A/B\\), got 1"),
    ('slots = (\n { name = "a"; device = "/dev/x"; boot_value = "1"; },\n { name = "b"; device = "/dev/y"; '
     'boot_value = "2"; },\n { name = "c"; device = "/dev/z"; boot_value = "3"; }\n);', 1,
     "expected exactly 2 slots \\(A/B\\), got 3"),
    ('slots = (\n { name = "a"; device = "/dev/x"; },\n { name = "b"; device = "/dev/y"; boot_value = "2"; }\n);',
     2, r"slots\[0\]: missing setting boot_value"),
    ("bootloader = 3;", 1, r"bootloader: expected a group"),
])
def test_wrong_types_and_shapes_name_file_and_line(text: str, line: int, message: str) -> None:
    exc = error_of(text)
    assert exc.where == f"otad.conf:{line}", str(exc)
    assert re.search(message, exc.what), exc.what


@pytest.mark.parametrize("text, line, message", [
    ("bootloader = {\n  bootlimt = 3;\n};", 2,
     "bootloader.bootlimt: unknown setting (expected one of: fw_env_config, lock_file, slot_variable, bootlimit, "
     "cmdline, mountinfo, partuuid_dir)"),
    ("health = {\n  timeout = 3;\n};", 2, "health.timeout: unknown setting (expected one of: timeout_s, checks)"),
    ("watchdog = {\n  path = \"/dev/watchdog\";\n};", 2,
     "watchdog.path: unknown setting (expected one of: enabled, device, timeout_s, nowayout)"),
    ('slots = (\n  { name = "a"; device = "/dev/x"; boot_value = "1"; },\n  { name = "b"; dev = "/dev/y"; }\n);',
     3, "slots[1].dev: unknown setting (expected one of: name, device, boot_value, selection)"),
    ("system = { };\nbootchooser = { };", 2,
     "unknown section 'bootchooser' (expected one of: system, install, bootloader, slots, health, watchdog, hawkbit, delta)"),
])
def test_unknown_names_are_errors_naming_file_and_line(text: str, line: int, message: str) -> None:
    exc = error_of(text)
    assert (exc.where, exc.what) == (f"otad.conf:{line}", message)


def test_errors_point_into_the_right_group_when_keys_repeat() -> None:
    # timeout_s and device appear in several groups; the message must point at the bad one.
    text = PI_TEXT.replace("    timeout_s = 15;", "    timeout_s = -3;")
    assert error_of(text).where == f"otad.conf:{line_of(text, 'timeout_s = -3')}"
    bad = 'device = "";'
    text = PI_TEXT.replace('device = "/dev/watchdog";', bad)
    assert error_of(text).where == f"otad.conf:{line_of(text, bad)}"


def test_keys_in_comments_and_strings_do_not_confuse_the_line() -> None:
    text = ('// bootlimit = 3; in a comment\nhealth = { checks = ( "bootlimit = 1" ); };\n'
            "/* bootlimit = 2;\n */\nbootloader = {\n  bootlimit = 0;\n};\n")
    assert error_of(text).where == "otad.conf:6"


def test_install_values_now_name_their_line_too() -> None:
    exc = error_of('install = {\n  chunk_kib = 4;\n  selection = "stable";\n};')
    assert (exc.where, exc.what) == ("otad.conf:3", "selection: expected SET,MODE (e.g. stable,copy1), got 'stable'")
    exc = error_of('install = {\n  signature = "gpg";\n};')
    assert exc.where == "otad.conf:2" and exc.what.startswith("install.signature: expected one of cms, rsa")


@pytest.mark.parametrize("section, key, good, words", [
    ("install", "signature", "rsa", "cms, rsa"),
    ("install", "cert_purpose", "codeSigning", "emailProtection, codeSigning, any"),
    ("install", "files_via", "debugfs", "auto, mount, debugfs"),
    ("hawkbit", "auth", "none", "none, target_token, gateway_token"),
])
def test_a_choice_takes_one_of_its_words_and_nothing_else(section: str, key: str, good: str, words: str) -> None:
    """The choices are Literal types; the file's word is checked against the same list."""
    cfg = config.parse(f'{section} = {{ {key} = "{good}"; }};', source="otad.conf")
    assert getattr(getattr(cfg, section), key) == good
    assert error_of(f'{section} = {{\n  {key} = 3;\n}};').what == f"{section}.{key}: expected str, got 3"
    assert error_of(f'{section} = {{\n  {key} = "x";\n}};').what.startswith(f"{section}.{key}: expected one of "
                                                                            f"{words}, got 'x'")


def test_syntax_errors_come_from_the_libconfig_reader_with_a_line() -> None:
    exc = error_of("bootloader = {\n  bootlimit = ;\n};")
    assert exc.where == "otad.conf:2"


def test_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the configuration") as info:
        config.load(str(tmp_path / "missing.conf"))
    assert info.value.where == str(tmp_path / "missing.conf")


@pytest.mark.parametrize("value, ok", [("stable,copy1", True), (None, True), ("a,b,c", False), (",x", False)])
def test_slot_config_checks_its_selection(value: Optional[str], ok: bool) -> None:
    if ok:
        SlotConfig("a", "/dev/x", "1", value)
    else:
        with pytest.raises(ConfigError, match="slots.selection: expected SET,MODE"):
            SlotConfig("a", "/dev/x", "1", value)


# ----------------------------------------------------------------------------- hawkbit


from otad.config import HawkbitConfig  # noqa: E402  (cases appended with the hawkbit section)

HAWKBIT_TEXT = """\
hawkbit = {
    url = "https://hawkbit.example.com";
    tenant = "DEFAULT";
    controller_id = "pi-0042";
    auth = "target_token";
    token_file = "/etc/otad/hawkbit.token";
    ca_file = "/etc/otad/hawkbit-ca.pem";
    poll_min_s = 1;
    poll_jitter = 0.25;
    max_download_attempts = 3;
    attributes = { site = "lab"; rack = "3"; };
};
"""


def test_hawkbit_defaults_mean_no_server() -> None:
    hb = config.load(None).hawkbit
    assert hb == HawkbitConfig() and hb.url is None and not hb.enabled
    assert (hb.tenant, hb.auth, hb.verify_tls, hb.poll_min_s, hb.poll_max_s, hb.poll_jitter) == (
        "DEFAULT", "none", True, 30.0, 86400.0, 0.1)
    assert (hb.backoff_cap_s, hb.feedback_interval_s, hb.max_download_attempts, hb.attributes) == (300.0, 10.0, 10, ())
    assert (hb.connect_timeout_s, hb.read_timeout_s, hb.download_without_token) == (30.0, 60.0, False)


def test_the_shipped_example_has_a_hawkbit_section_with_the_defaults() -> None:
    assert config.load(str(EXAMPLE)).hawkbit == HawkbitConfig()


def test_a_hawkbit_section_parses() -> None:
    hb = config.parse(HAWKBIT_TEXT, source="otad.conf").hawkbit
    assert hb.enabled and hb.url == "https://hawkbit.example.com" and hb.controller_id == "pi-0042"
    assert (hb.auth, hb.token_file) == ("target_token", "/etc/otad/hawkbit.token")
    assert hb.ca_file == "/etc/otad/hawkbit-ca.pem"
    assert (hb.poll_min_s, hb.poll_jitter, hb.max_download_attempts) == (1, 0.25, 3)
    assert hb.attributes == (("site", "lab"), ("rack", "3"))


# (good, bad, the line the error names, message): a check between keys names the key it blames.
HAWKBIT_BAD = [
    ('    controller_id = "pi-0042";', '    controller_id = "pi-0042"; controller_id_from = "/etc/machine-id";', 4,
     "hawkbit.controller_id_from: given together with hawkbit.controller_id; expected exactly one"),
    ('    controller_id = "pi-0042";', "", 2, "hawkbit: url is set but no controller id"),
    ('    token_file = "/etc/otad/hawkbit.token";', "", 5, "hawkbit.token_file: required with auth = 'target_token'"),
    ('    auth = "target_token";', '    auth = "none";', 6, "hawkbit.token_file: given but auth = 'none'"),
    ('    auth = "target_token";', '    auth = "bearer";', 5,
     "hawkbit.auth: expected one of none, target_token, gateway_token"),
    ('    url = "https://hawkbit.example.com";', '    url = "hawkbit.example.com";', 2,
     r"hawkbit.url: expected http\(s\)://host\[:port\]\[/path\], got 'hawkbit.example.com'"),
    ('    tenant = "DEFAULT";', '    tenant = "DE FAULT";', 3, "hawkbit.tenant: expected a non-empty name"),
    ('    ca_file = "/etc/otad/hawkbit-ca.pem";', '    client_cert = "/etc/otad/device.crt";', 7,
     "hawkbit.client_cert: given without hawkbit.client_key; expected both or neither"),
    ("    poll_jitter = 0.25;", "    poll_jitter = 0.6;", 9, r"hawkbit.poll_jitter: expected 0..0.5, got 0.6"),
    ("    poll_min_s = 1;", "    poll_min_s = 0;", 8, "hawkbit.poll_min_s: expected a number > 0, got 0"),
    ("    poll_min_s = 1;", "    poll_min_s = 1; poll_max_s = 0.5;", 8,
     r"hawkbit.poll_max_s: expected a number >= poll_min_s"),
    ("    max_download_attempts = 3;", "    max_download_attempts = 0;", 10,
     r"hawkbit.max_download_attempts: expected 1..1000, got 0"),
    ('rack = "3";', 'rack = "3~";', 11, r"hawkbit.attributes.rack: expected a value of up to 128 printable ASCII"),
    ('rack = "3";', f'rack = "{"x" * 129}";', 11, r"hawkbit.attributes.rack: expected a value of up to 128"),
]


@pytest.mark.parametrize("good, bad, line, message", HAWKBIT_BAD, ids=[m[:40] for _, _, _, m in HAWKBIT_BAD])
def test_bad_hawkbit_values_name_file_and_line(good: str, bad: str, line: int, message: str) -> None:
    assert HAWKBIT_TEXT.count(good) == 1
    exc = error_of(HAWKBIT_TEXT.replace(good, bad))
    assert exc.where == f"otad.conf:{line}", str(exc)
    assert re.search(message, exc.what), exc.what


@pytest.mark.parametrize("text, line, message", [
    ("hawkbit = {\n  attributes = ( \"a\" );\n};", 2,
     r"hawkbit.attributes: expected a group \{ name = \"value\"; ... \}"),
    ("hawkbit = {\n  attributes = { a = 1; };\n};", 2, "hawkbit.attributes: expected strings only, got 1"),
    ("hawkbit = {\n  poll_jitter = \"0.1\";\n};", 2, "hawkbit.poll_jitter: expected float, got '0.1'"),
    ("hawkbit = {\n  pollmin = 1;\n};", 2, r"hawkbit.pollmin: unknown setting \(expected one of: url, tenant,"),
])
def test_wrong_hawkbit_types_name_file_and_line(text: str, line: int, message: str) -> None:
    exc = error_of(text)
    assert exc.where == f"otad.conf:{line}", str(exc)
    assert re.search(message, exc.what), exc.what


def test_a_controller_id_file_supplies_the_first_line(tmp_path: Path) -> None:
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("0123456789abcdef0123456789abcdef\nsecond line\n")
    hb = HawkbitConfig(url="http://localhost:8080", controller_id_from=str(machine_id))
    assert hb.resolved_controller_id() == "0123456789abcdef0123456789abcdef"
    assert HawkbitConfig(url="http://h", controller_id="pi").resolved_controller_id() == "pi"
    machine_id.write_text("\n")
    with pytest.raises(ConfigError, match="expected a first line with a name") as info:
        hb.resolved_controller_id()
    assert info.value.where == str(machine_id)
    with pytest.raises(ConfigError, match="cannot read"):
        HawkbitConfig(controller_id_from=str(tmp_path / "missing")).resolved_controller_id()


def test_hawkbit_values_changed_later_are_still_checked() -> None:
    with pytest.raises(ConfigError, match=r"hawkbit.poll_jitter: expected 0..0.5, got 0.9"):
        Config().replace("hawkbit", poll_jitter=0.9)


# ----------------------------------------------------------------------------- loading writes nothing


def _tree(root: Path) -> Dict[str, Tuple[int, int, int]]:
    """Every path under `root` with its mode, size and mtime: what a write would change."""
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        found[str(path)] = (st.st_mode, st.st_size, st.st_mtime_ns)
    return found


def _example_configs(tmp_path: Path, pki: Pki) -> Dict[str, Path]:
    """etc/otad.conf as shipped and with its swupdate_cfg example on (SWUpdate's example file, its
    token lines on), and the simulated device's otad.conf, also with swupdate_cfg; all under
    `tmp_path/ro`, their state_dir included."""
    from tests.unit.hawkbit.test_suricatta import WITH_TOKEN

    ro = tmp_path / "ro"
    ro.mkdir()
    swupdate = ro / "swupdate.cfg"
    swupdate.write_text(WITH_TOKEN)
    shipped = EXAMPLE.read_text().replace('state_dir = "/var/lib/otad"', f'state_dir = "{ro / "state"}"')
    migrating = shipped.replace('// swupdate_cfg = "/etc/swupdate.cfg";', f'swupdate_cfg = "{swupdate}";')
    assert shipped != EXAMPLE.read_text() and migrating != shipped
    sim = SimDevice.create(ro / "sim", trust_file=pki.ca_pem)
    configs = {"shipped": shipped, "migrating": migrating, "sim": sim.layout.config.read_text(),
               "sim migrating": sim.layout.config.read_text() + f'hawkbit = {{ swupdate_cfg = "{swupdate}"; }};\n'}
    paths = {}
    for name, text in configs.items():
        paths[name] = ro / f"{name.replace(' ', '-')}.conf"
        paths[name].write_text(text)
    return paths


def test_loading_every_example_config_in_a_read_only_directory_writes_nothing(tmp_path: Path, pki: Pki) -> None:
    configs = _example_configs(tmp_path, pki)
    ro = tmp_path / "ro"
    modes = {path: path.lstat().st_mode for path in [ro, *ro.rglob("*")] if path.is_dir()}
    try:
        for path in modes:
            path.chmod(0o555)  # root may write anyway: the tree is compared afterwards
        before = _tree(ro)
        loaded = {name: config.load(str(path)) for name, path in configs.items()}
        assert _tree(ro) == before
    finally:
        for path, mode in modes.items():
            path.chmod(mode)
    assert loaded["migrating"].hawkbit.swupdate_cfg == str(ro / "swupdate.cfg")
    assert loaded["sim"].ab_enabled and loaded["sim migrating"].hawkbit.swupdate_cfg is not None


def test_swupdate_cfg_is_not_even_read_when_loading(tmp_path: Path) -> None:
    text = (f'hawkbit = {{\n    url = "http://h:8080";\n    swupdate_cfg = "{tmp_path / "missing.cfg"}";\n}};\n')
    hb = config.parse(text, source="otad.conf").hawkbit  # the controller id may come from there
    assert hb.url == "http://h:8080" and hb.controller_id is None
    exc = error_of(text.replace("    swupdate_cfg", "    // swupdate_cfg"))
    assert exc.what.startswith("hawkbit: url is set but no controller id") and exc.where == "otad.conf:2"
