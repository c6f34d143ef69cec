"""Migrating SWUpdate's swupdate.cfg: its example file, tokens kept out of every returned value
and stored 0600, scheme-less URLs, the keys otad cannot honour, errors naming file:line, and the
merge under otad.conf's hawkbit keys that `otad run` makes when it starts."""

from __future__ import annotations

import logging
import os
import re
import stat
from pathlib import Path
from typing import Any, Dict

import pytest

from otad import config
from otad.config import Config
from otad.errors import ConfigError
from otad.hawkbit.suricatta import TokenRef, apply_swupdate_cfg, migrate_token, read_suricatta, token_path
from otad.sim.device import SimDevice
from tests.conftest import run_cli
from tests.hawkbit_fakes import CONTROLLER_ID, DdiFake
from tests.pki import Pki

TARGET_TOKEN = "3bc13b476cb3962a0c63a5c92beacfh7"
GATEWAY_TOKEN = "99616d4fae39167deddf21cd90047861"

# SWUpdate's examples/configuration/swupdate.cfg (sbabic/swupdate, CC0-1.0), shortened: the
# `name : { }` form, '#' and '/* */' comments, keys otad does not know, tokens commented out.
SWUPDATE_CFG = """\
# SWUpdate configuration file
globals :
{
\tverbose = true;
\tloglevel = 5;
\tsyslog = true;
\t/* public-key-file = "test.pem";*/
\tmtd-blacklist = "0 1 2 3 4 5 6";
};

download :
{
\tauthentication = "user:password";
\tretries = 3;
\ttimeout = 1800;
\tretrywait\t= 5;
\turl = "http://example.com/software.swu";
};

identify : (
\t{ name = "versionSpC"; value = "1.0"; },
\t{ name = "hwId"; value = "ipse"; },
\t{ name = "hwVersion"; value = "333"; },
\t{ name = "serialNo"; value = "1234567890"; },
\t{ name = "swCompatibility"; value = "unknown";}
);

suricatta :
{
\ttenant\t\t= "default";
\tid\t\t= "123456";
\turl \t\t= "http://papero.fritz.box:8080";
\tpolldelay\t= 20;
\tnocheckcert\t= true;
\tretry\t\t= 4;
\tretrywait\t= 200;
\tloglevel\t= 10;
\tuserid\t\t= 1000;
\tgroupid\t\t= 1000;
\tenable\t\t= true;
\tinitial-report-resend-period = 30;
\tconnection-timeout = 10;
\tmax-download-speed = "1M";
/*
\tcafile\t\t= "/etc/ssl/cafile";
\tsslkey\t\t= "/etc/ssl/sslkey";
\tsslcert\t\t= "/etc/ssl/sslcert";
\ttargettoken \t= "3bc13b476cb3962a0c63a5c92beacfh7";
\tgatewaytoken \t= "99616d4fae39167deddf21cd90047861";
\tusetokentodwl   = false;
*/
};

webserver :
{
\tdocument_root = "./www";
\tuserid\t\t= 1000;
\tgroupid\t\t= 1000;
};
"""

# The same with the commented-out block switched on: TLS files and both tokens.
ALL_ON = SWUPDATE_CFG.replace("/*\n\tcafile", "\n\tcafile").replace("\tusetokentodwl   = false;\n*/",
                                                                    "\tusetokentodwl   = false;\n")
WITH_TOKEN = ALL_ON.replace('\tgatewaytoken \t= "99616d4fae39167deddf21cd90047861";\n', "")


def write(tmp_path: Path, text: str, name: str = "swupdate.cfg") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def line_of(text: str, needle: str) -> int:
    return text[: text.index(needle)].count("\n") + 1


def all_text(values: Dict[str, Any]) -> str:
    """Everything a returned value could show: reprs and str() of each."""
    return " ".join(f"{v!r} {v}" for v in values.values())


# ----------------------------------------------------------------------------- SWUpdate's example


def test_swupdate_example_maps_onto_hawkbit_fields(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="otad.hawkbit.suricatta")
    path = write(tmp_path, SWUPDATE_CFG)
    values = read_suricatta(path)
    assert values == {
        "tenant": "default",
        "controller_id": "123456",
        "url": "http://papero.fritz.box:8080",
        "poll_min_s": 20.0,
        "verify_tls": False,
        "max_download_attempts": 5,  # retry = 4 resumes after the first try
        "backoff_cap_s": 200.0,
        "connect_timeout_s": 10.0,
        "attributes": (("versionSpC", "1.0"), ("hwId", "ipse"), ("hwVersion", "333"),
                       ("serialNo", "1234567890"), ("swCompatibility", "unknown")),
    }  # the tokens and TLS files are inside /* */: not set
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{path}:{line_of(SWUPDATE_CFG, 'max-download-speed')}: suricatta.max-download-speed "
                        "not migrated: otad does not limit the download rate"]
    assert "document_root" not in caplog.text and "authentication" not in caplog.text  # other sections: unread
    assert "suricatta.loglevel is not used by otad" in caplog.text


def test_a_token_is_never_in_a_returned_value_and_is_stored_0600(tmp_path: Path) -> None:
    path = write(tmp_path, WITH_TOKEN)
    values = read_suricatta(path)
    assert values["auth"] == "target_token"
    assert values["ca_file"] == "/etc/ssl/cafile"
    assert (values["client_cert"], values["client_key"]) == ("/etc/ssl/sslcert", "/etc/ssl/sslkey")
    assert values["download_without_token"] is True  # usetokentodwl = false
    ref = values["token_file"]
    assert isinstance(ref, TokenRef) and ref.key == "targettoken"
    assert TARGET_TOKEN not in all_text(values)
    state_dir = tmp_path / "state"
    stored = ref.store(str(state_dir))
    assert stored == token_path(str(state_dir), "target_token") == str(state_dir / "hawkbit-target-token")
    assert Path(stored).read_text() == TARGET_TOKEN + "\n"
    assert stat.S_IMODE(os.stat(stored).st_mode) == 0o600


def test_both_tokens_use_the_gateway_token_as_swupdate_does(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    values = read_suricatta(write(tmp_path, ALL_ON))
    assert values["auth"] == "gateway_token" and values["token_file"].key == "gatewaytoken"
    assert "both targettoken and gatewaytoken are set; using the gateway token" in caplog.text
    assert GATEWAY_TOKEN not in caplog.text and TARGET_TOKEN not in caplog.text


def test_the_hawkbit_section_of_newer_swupdate_wins_over_suricatta(tmp_path: Path) -> None:
    text = SWUPDATE_CFG + 'hawkbit : {\n\turl = "https://hawkbit.example.com";\n\tpolldelay = 300;\n};\n'
    values = read_suricatta(write(tmp_path, text))
    assert values["url"] == "https://hawkbit.example.com" and values["poll_min_s"] == 300.0
    assert values["controller_id"] == "123456"


@pytest.mark.parametrize("url, expected", [
    ("localhost:8080", "http://localhost:8080"),
    ("papero.fritz.box", "http://papero.fritz.box"),
    ("https://hawkbit.example.com/prefix", "https://hawkbit.example.com/prefix"),
    (" 10.0.0.1:8080 ", "http://10.0.0.1:8080"),
])
def test_a_url_without_a_scheme_gets_http_like_libcurl(tmp_path: Path, url: str, expected: str) -> None:
    path = write(tmp_path, f'suricatta : {{ url = "{url}"; id = "dev-01"; tenant = "DEFAULT"; }};\n')
    assert read_suricatta(path)["url"] == expected


def test_empty_strings_are_unset_as_in_swupdate(tmp_path: Path) -> None:
    path = write(tmp_path, 'suricatta : { url = ""; id = "dev-01"; targettoken = ""; cafile = ""; };\n')
    assert read_suricatta(path) == {"controller_id": "dev-01"}


@pytest.mark.parametrize("value, expected", [('"30"', 30.0), ("30", 30.0), ("0", 1.0)])
def test_retrywait_is_read_as_text_or_number(tmp_path: Path, value: str, expected: float) -> None:
    # SWUpdate reads retrywait as a string and ignores an integer; otad takes both.
    path = write(tmp_path, f"suricatta : {{ retrywait = {value}; }};\n")
    assert read_suricatta(path)["backoff_cap_s"] == expected


def test_retry_zero_means_a_single_attempt(tmp_path: Path) -> None:
    assert read_suricatta(write(tmp_path, "suricatta : { retry = 0; };\n"))["max_download_attempts"] == 1


@pytest.mark.parametrize("key, value, why", [
    ("proxy", '"http://proxy:3128"', "set https_proxy / http_proxy in otad's environment"),
    ("ciphers", '"HIGH"', "TLS defaults"),
    ("interface", '"eth0"', "does not bind"),
    ("sslkeypassword", '"secret"', "unencrypted client key"),
    ("enable", "false", "otad polls whenever hawkbit.url is set"),
])
def test_keys_otad_cannot_honour_are_warned_about(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                 key: str, value: str, why: str) -> None:
    path = write(tmp_path, f'suricatta : {{\n  id = "dev-01";\n  {key} = {value};\n}};\n')
    assert read_suricatta(path) == {"controller_id": "dev-01"}
    assert f"{path}:3: suricatta.{key}" in caplog.text and why in caplog.text
    assert "secret" not in caplog.text


# ----------------------------------------------------------------------------- malformed input


@pytest.mark.parametrize("setting, message", [
    ('polldelay = "20";', "suricatta.polldelay: expected an integer, got '20'"),
    ("polldelay = 0;", r"suricatta.polldelay: expected 1..86400, got 0"),
    ("nocheckcert = 1;", "suricatta.nocheckcert: expected true or false, got 1"),
    ('url = "ftp://server/";', r"suricatta.url: expected \[http\(s\)://\]host"),
    ('url = "http://server/?x=1";', r"suricatta.url: expected \[http\(s\)://\]host"),
    ('id = "dev 01";', "suricatta.id: expected a name without '/' or blanks"),
    ("tenant = 5;", "suricatta.tenant: expected a string, got 5"),
    ('sslkey = "pkcs11:model=ATECC608B;object=device;type=private";', "PKCS#11 URIs are not supported"),
    ("retry = -1;", "suricatta.retry: expected 0..2147483648, got -1"),
])
def test_a_malformed_value_names_file_and_line(tmp_path: Path, setting: str, message: str) -> None:
    # In the example's suricatta section, drop the key's own line and set it where loglevel was.
    head, _, section = SWUPDATE_CFG.partition("suricatta :")
    key = setting.split(" ")[0]
    section = re.sub(rf"\n\t{re.escape(key)}\b[^\n]*", "", section, count=1)
    text = head + "suricatta :" + section.replace("\tloglevel\t= 10;", "\t" + setting)
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        read_suricatta(path)
    assert info.value.where == f"{path}:{line_of(text, setting)}", str(info.value)
    assert re.search(message, info.value.what), info.value.what


def test_a_malformed_token_is_refused_without_quoting_it(tmp_path: Path) -> None:
    text = 'suricatta :\n{\n\ttargettoken = "two words-secret";\n};\n'
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="expected one word of printable ASCII") as info:
        read_suricatta(path)
    assert info.value.where == f"{path}:3" and "secret" not in str(info.value)


def test_syntax_errors_name_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, 'suricatta :\n{\n\turl = "http://x"\n\tid = ;\n};\n')
    with pytest.raises(ConfigError) as info:
        read_suricatta(path)
    assert info.value.where == f"{path}:4"


@pytest.mark.parametrize("text, line, message", [
    ('globals : { verbose = true; };\n', None, "no suricatta section"),
    ('globals : { };\nsuricatta = "x";\n', 2, "suricatta: expected a group"),
    ('suricatta : { id = "a"; };\nidentify : (\n { name = "hwId"; value = 333; }\n);\n', 2,
     r"identify\[0\]: expected \{ name"),
])
def test_a_malformed_layout_is_a_config_error(tmp_path: Path, text: str, line: Any, message: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        read_suricatta(path)
    assert info.value.where == (path if line is None else f"{path}:{line}")


def test_an_unreadable_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read swupdate.cfg") as info:
        read_suricatta(str(tmp_path / "missing.cfg"))
    assert info.value.where == str(tmp_path / "missing.cfg")


# ----------------------------------------------------------------------------- migrate_token


def test_migrate_token_rewrites_only_when_the_token_or_the_mode_differ(tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    path = migrate_token(TARGET_TOKEN, state, "target_token")
    inode = os.stat(path).st_ino
    assert migrate_token(TARGET_TOKEN, state, "target_token") == path
    assert os.stat(path).st_ino == inode  # untouched: loading the config does not wear the flash
    os.chmod(path, 0o644)
    migrate_token(TARGET_TOKEN, state, "target_token")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    migrate_token("rotated-token", state, "target_token")
    assert Path(path).read_text() == "rotated-token\n"
    assert migrate_token(GATEWAY_TOKEN, state, "gateway_token").endswith("hawkbit-gateway-token")


def test_migrate_token_errors_name_the_file_never_the_token(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ConfigError, match="cannot store the hawkBit target token") as info:
        migrate_token(TARGET_TOKEN, str(blocker / "state"), "target_token")
    assert info.value.where == str(blocker / "state" / "hawkbit-target-token")
    with pytest.raises(ConfigError, match="got 9 characters") as bad:
        migrate_token("a\nsecret!", str(tmp_path), "target_token")
    assert "secret" not in str(bad.value)
    with pytest.raises(ValueError, match="kind: expected one of"):
        migrate_token(TARGET_TOKEN, str(tmp_path), "bearer")


def test_a_token_removed_after_reading_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, 'suricatta : { targettoken = "abc"; };\n')
    ref = read_suricatta(path)["token_file"]
    Path(path).write_text("suricatta : { };\n")
    with pytest.raises(ConfigError, match="suricatta.targettoken: gone since the file was read"):
        ref.store(str(tmp_path / "state"))


# ----------------------------------------------------------------------------- apply_swupdate_cfg


def hawkbit_with_swupdate(tmp_path: Path, keys: str = "", swupdate: str = WITH_TOKEN) -> Config:
    """otad.conf's hawkbit `keys` over SWUpdate's example swupdate.cfg (its target token on), as
    `otad run` merges them."""
    cfg = tmp_path / "swupdate.cfg"
    cfg.write_text(swupdate)
    # hawkbit comes before system on purpose: the token still goes under system.state_dir.
    text = (f'hawkbit = {{\n    swupdate_cfg = "{cfg}";\n{keys}}};\n'
            f'system = {{\n    state_dir = "{tmp_path / "state"}";\n}};\n')
    return apply_swupdate_cfg(config.parse(text, source="otad.conf"))


def test_swupdate_cfg_supplies_defaults_and_its_token_goes_to_a_0600_file(tmp_path: Path) -> None:
    hb = hawkbit_with_swupdate(tmp_path).hawkbit
    assert (hb.url, hb.tenant, hb.controller_id) == ("http://papero.fritz.box:8080", "default", "123456")
    assert (hb.poll_min_s, hb.max_download_attempts) == (20.0, 5)
    assert hb.attributes == (("versionSpC", "1.0"), ("hwId", "ipse"), ("hwVersion", "333"), ("serialNo", "1234567890"),
                             ("swCompatibility", "unknown"))
    assert hb.auth == "target_token" and hb.token_file == str(tmp_path / "state" / "hawkbit-target-token")
    assert Path(hb.token_file).read_text() == "3bc13b476cb3962a0c63a5c92beacfh7\n"
    assert (Path(hb.token_file).stat().st_mode & 0o777) == 0o600
    assert "3bc13b476cb3962a0c63a5c92beacfh7" not in repr(hb)


def test_explicit_hawkbit_keys_override_swupdate_cfg(tmp_path: Path) -> None:
    keys = ('    tenant = "DEFAULT";\n    controller_id_from = "/etc/machine-id";\n    poll_min_s = 5;\n'
            '    auth = "none";\n    attributes = { site = "lab"; };\n')
    hb = hawkbit_with_swupdate(tmp_path, keys).hawkbit
    assert (hb.tenant, hb.poll_min_s, hb.url) == ("DEFAULT", 5, "http://papero.fritz.box:8080")
    assert hb.controller_id is None and hb.controller_id_from == "/etc/machine-id"  # swupdate's id dropped
    assert hb.auth == "none" and hb.token_file is None
    assert not (tmp_path / "state").exists()  # the token was not needed, so it was not copied
    assert dict(hb.attributes)["site"] == "lab" and dict(hb.attributes)["hwId"] == "ipse"


def test_an_explicit_token_file_wins_over_the_swupdate_token(tmp_path: Path) -> None:
    hb = hawkbit_with_swupdate(tmp_path, '    token_file = "/etc/otad/token";\n    auth = "target_token";\n').hawkbit
    assert hb.token_file == "/etc/otad/token" and not (tmp_path / "state").exists()


def test_a_malformed_swupdate_cfg_names_its_own_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="suricatta.polldelay: expected an integer") as info:
        hawkbit_with_swupdate(tmp_path, swupdate=WITH_TOKEN.replace("polldelay\t= 20;", 'polldelay\t= "20";'))
    assert info.value.where == f"{tmp_path / 'swupdate.cfg'}:{line_of(WITH_TOKEN, 'polldelay')}"


def test_a_swupdate_default_otad_refuses_points_at_swupdate_cfg(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        hawkbit_with_swupdate(tmp_path, "    poll_max_s = 10;\n")
    assert info.value.what.startswith("hawkbit.poll_max_s: expected a number >= poll_min_s (20.0)")
    assert info.value.where == "otad.conf:3"  # the explicit key that does not fit the default
    with pytest.raises(ConfigError) as info:
        hawkbit_with_swupdate(tmp_path, swupdate=WITH_TOKEN.replace('"ipse"', '"ip~se"'))
    assert f"(a default from {tmp_path / 'swupdate.cfg'})" in info.value.what
    assert info.value.where == "otad.conf:2"  # the swupdate_cfg line


def test_loading_leaves_swupdate_cfg_to_the_merge_which_leaves_nothing_to_merge(tmp_path: Path) -> None:
    cfg = tmp_path / "swupdate.cfg"
    cfg.write_text(WITH_TOKEN)
    text = f'hawkbit = {{ swupdate_cfg = "{cfg}"; }};\nsystem = {{ state_dir = "{tmp_path / "state"}"; }};\n'
    loaded = config.parse(text, source="otad.conf")
    assert loaded.hawkbit.url is None and loaded.hawkbit.swupdate_cfg == str(cfg)  # not read yet
    merged = apply_swupdate_cfg(loaded)
    assert merged.hawkbit.url == "http://papero.fritz.box:8080" and merged.hawkbit.swupdate_cfg is None
    assert apply_swupdate_cfg(merged) is merged
    assert apply_swupdate_cfg(Config()) == Config()


def test_a_section_built_in_code_counts_its_changed_keys_as_given(tmp_path: Path) -> None:
    cfg = tmp_path / "swupdate.cfg"
    cfg.write_text(WITH_TOKEN)
    built = Config().replace("hawkbit", swupdate_cfg=str(cfg), tenant="lab").replace(
        "system", state_dir=str(tmp_path / "state"))
    hb = apply_swupdate_cfg(built).hawkbit
    assert (hb.tenant, hb.controller_id) == ("lab", "123456")


def test_otad_run_takes_server_id_and_token_from_swupdate_cfg(tmp_path: Path, pki: Pki,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    with DdiFake() as fake:
        swupdate = tmp_path / "swupdate.cfg"
        swupdate.write_text(f'suricatta : {{ url = "{fake.url}"; id = "{CONTROLLER_ID}"; tenant = "{fake.tenant}";\n'
                            f'              targettoken = "{TARGET_TOKEN}"; polldelay = 1; }};\n')
        sim = SimDevice.create(tmp_path / "sim", trust_file=pki.ca_pem,
                               extra_config=f'hawkbit = {{ swupdate_cfg = "{swupdate}"; }};\n')
        sim.boot()
        stored = Path(token_path(str(sim.layout.state_dir), "target_token"))
        rc, _, _ = run_cli(["--config", str(sim.layout.config), "status"], capsys)
        assert rc == 0 and not stored.exists(), "only the daemon's start merges swupdate.cfg"
        fake.auth = f"TargetToken {TARGET_TOKEN}"
        rc, _, err = run_cli(["--config", str(sim.layout.config), "run", "--once", "--no-reboot"], capsys)
        assert rc == 0, err
        assert stored.read_text() == f"{TARGET_TOKEN}\n" and stored.stat().st_mode & 0o777 == 0o600
        assert any(r.path.startswith(f"/{fake.tenant}/controller/v1/{CONTROLLER_ID}") for r in fake.requests)
        assert not fake.server_errors
