"""Migration from SWUpdate: an existing swupdate.cfg's suricatta settings as `hawkbit` defaults.

Reads the keys SWUpdate reads (suricatta/server_hawkbit.c `server_hawkbit_settings`,
corelib/server_utils.c `channel_settings`, the `identify` list) and names them as HawkbitConfig
fields; `apply_swupdate_cfg` merges them under the keys otad.conf sets when `otad run` starts
(loading a configuration reads and writes no other file). A token is never returned: `TokenRef`
only says where it is, and `migrate_token` copies it into a 0600 file. Imports no requests.
"""

from __future__ import annotations

import logging
import os
import re
import urllib.parse
from dataclasses import dataclass, replace
from typing import Any, Callable, Dict, Optional, Tuple

from otad import libconfig
from otad.config import HAWKBIT_PAIRS, BadValue, Config, HawkbitConfig
from otad.durable import atomic_write
from otad.errors import ConfigError
from otad.smallfile import read_bytes

log = logging.getLogger(__name__)

# SWUpdate reads "suricatta" first, then "hawkbit" (newer releases); a key in the second wins.
SECTIONS = ("suricatta", "hawkbit")
TOKEN_KINDS = ("target_token", "gateway_token")
TOKEN_KEYS = {"targettoken": "target_token", "gatewaytoken": "gateway_token"}
MAX_TOKEN_CHARS = 4096  # what otad.hawkbit.ddi reads from a token file
MAX_POLL_S = 86400
MAX_ATTEMPTS = 1000
_MAX_BYTES = 1 << 20
_TOKEN = re.compile(r"[\x21-\x7e]+")  # one word of printable ASCII, as an HTTP header needs
# Keys otad cannot honour: warned about, never silently dropped.
_UNSUPPORTED = {
    "proxy": "set https_proxy / http_proxy in otad's environment instead (requests honours them)",
    "ciphers": "otad uses the TLS defaults of Python's ssl module",
    "interface": "otad does not bind to an interface",
    "max-download-speed": "otad does not limit the download rate",
    "sslkeypassword": "otad needs an unencrypted client key",
    "api_key_header": "otad authenticates with hawkBit tokens only",
    "api_key": "otad authenticates with hawkBit tokens only",
}
_NOT_CODE = re.compile(r'"(?:[^"\\]|\\.)*"?|/\*.*?(?:\*/|\Z)|(?://|#)[^\n]*', re.DOTALL)


class _Bad(Exception):
    """A value otad cannot take; `read_suricatta` adds file:line."""


@dataclass(frozen=True)
class TokenRef:
    """Where a token is in swupdate.cfg, never the token itself (so no repr or log shows it)."""

    source: str  # the swupdate.cfg path
    section: str  # suricatta | hawkbit
    key: str  # targettoken | gatewaytoken
    kind: str  # target_token | gateway_token

    def store(self, state_dir: str) -> str:
        """Read the token again and keep it in a 0600 file under `state_dir`; return that path."""
        group = _load(self.source)[0].get(self.section)
        value = group.get(self.key) if isinstance(group, dict) else None
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{self.section}.{self.key}: gone since the file was read", self.source)
        return migrate_token(value, state_dir, self.kind)


def apply_swupdate_cfg(cfg: Config) -> Config:
    """`cfg` with the hawkbit keys otad.conf sets over the defaults of `hawkbit.swupdate_cfg` (its
    suricatta section), and no `swupdate_cfg` left; `cfg` itself without one. The daemon's start.

    Keys that belong together come from one side only: an explicit controller_id_from drops
    swupdate.cfg's `id`, an explicit client_cert or client_key drops both of its files, and its
    token is used only while `auth` and `token_file` are not given otherwise. That token is
    stored under `system.state_dir` (mode 0600) only then. Attributes merge by name, the
    explicit ones winning. A bad merged value is a ConfigError at file:line of its key, or of
    `swupdate_cfg` for a value that came from there.
    """
    path = cfg.hawkbit.swupdate_cfg
    if not path:
        return cfg
    given = {key: getattr(cfg.hawkbit, key) for key in cfg.given("hawkbit") - {"swupdate_cfg"}}
    defaults = read_suricatta(path)
    token = defaults.pop("token_file", None)
    kind = defaults.pop("auth", None)
    if "controller_id_from" in given or "controller_id" in given:
        defaults.pop("controller_id", None)
    for pair in HAWKBIT_PAIRS:
        if any(key in given for key in pair):
            for key in pair:
                defaults.pop(key, None)
    merged = {**defaults, **given}
    if "attributes" in defaults and "attributes" in given:
        merged["attributes"] = tuple({**dict(defaults["attributes"]), **dict(given["attributes"])}.items())
    if isinstance(token, TokenRef) and "token_file" not in given and given.get("auth", kind) == kind:
        merged["auth"] = kind
        merged["token_file"] = token.store(cfg.system.state_dir)
    try:
        hawkbit = HawkbitConfig(**merged)
    except BadValue as exc:
        key = str(exc.path[1]) if len(exc.path) > 1 else ""
        if key in defaults and key not in given:
            raise ConfigError(f"{exc.what} (a default from {path})", cfg.where("hawkbit", "swupdate_cfg")) from None
        raise ConfigError(exc.what, cfg.where(*exc.path)) from None
    return replace(cfg, hawkbit=hawkbit)


def read_suricatta(path: str) -> Dict[str, Any]:
    """The settings of swupdate.cfg at `path` as HawkbitConfig field names → values.

    `token_file` is a TokenRef (and `auth` its kind) when the file has a token. Unknown keys are
    ignored (logged at debug), keys otad cannot honour are logged as warnings, and a malformed
    value is a ConfigError naming path:line.
    """
    tree, lines = _load(path)
    out: Dict[str, Any] = {}
    tokens: Dict[str, TokenRef] = {}
    found = False
    for section in SECTIONS:
        group = tree.get(section)
        if group is None:
            continue
        if not isinstance(group, dict):
            raise ConfigError(f"{section}: expected a group {{ ... }}, got {group!r}", lines(section))
        found = True
        for key, value in group.items():
            try:
                _setting(out, tokens, path, section, key, value, lines)
            except _Bad as exc:
                raise ConfigError(f"{section}.{key}: {exc}", lines(section, key)) from None
    if not found:
        raise ConfigError("no suricatta section: expected SWUpdate's hawkBit settings `suricatta : { ... }`", path)
    if tokens:
        # SWUpdate sets the TargetToken header, then the GatewayToken one over it.
        token = tokens.get("gatewaytoken") or tokens["targettoken"]
        if len(tokens) > 1:
            log.warning("%s: both targettoken and gatewaytoken are set; using the gateway token, as SWUpdate "
                        "does", lines(token.section, token.key))
        out["auth"], out["token_file"] = token.kind, token
    if tree.get("identify") is not None:
        out["attributes"] = _identify(tree["identify"], lines)
    if tree.get("custom-http-headers") is not None:
        log.warning("%s: custom-http-headers not migrated: otad sends no extra headers", lines("custom-http-headers"))
    return out


def _setting(out: Dict[str, Any], tokens: Dict[str, TokenRef], path: str, section: str, key: str, value: Any,
             lines: "_Lines") -> None:
    """Map one key of a suricatta/hawkbit group into `out` (tokens into `tokens`)."""
    if isinstance(value, str) and value == "" and key in _STRING_KEYS:
        return  # SWUpdate skips an empty string (strlen(tmp) == 0)
    if key in TOKEN_KEYS:
        _check_token(_text(value))
        tokens[key] = TokenRef(path, section, key, TOKEN_KEYS[key])
    elif key in _KEYS:
        name, convert = _KEYS[key]
        out[name] = convert(value)
    elif key in _UNSUPPORTED:
        log.warning("%s: %s.%s not migrated: %s", lines(section, key), section, key, _UNSUPPORTED[key])
    elif key == "enable" and value is False:
        log.warning("%s: %s.enable = false not migrated: otad polls whenever hawkbit.url is set",
                    lines(section, key), section)
    else:
        log.debug("%s: %s.%s is not used by otad", lines(section, key), section, key)


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise _Bad(f"expected a string, got {value!r}")
    return value


def _integer(value: object, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _Bad(f"expected an integer, got {value!r}")
    if not low <= value <= high:
        raise _Bad(f"expected {low}..{high}, got {value}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _Bad(f"expected true or false, got {value!r}")
    return value


def _url(value: Any) -> str:
    text = _text(value).strip()
    if "://" not in text:
        text = f"http://{text}"  # libcurl's default for "host:port", which SWUpdate accepts
    try:
        parts = urllib.parse.urlsplit(text)
    except ValueError:  # urllib: "Invalid IPv6 URL" for an unbalanced '[' or ']'
        raise _Bad(f"expected [http(s)://]host[:port][/path], got {value!r}") from None
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise _Bad(f"expected [http(s)://]host[:port][/path], got {value!r}")
    return text


def _name(value: Any) -> str:
    text = _text(value)
    if "/" in text or any(c.isspace() for c in text):
        raise _Bad(f"expected a name without '/' or blanks, got {value!r}")
    return text


def _file(value: Any) -> str:
    text = _text(value)
    if text.startswith("pkcs11:"):
        raise _Bad("PKCS#11 URIs are not supported by otad; expected the path of a PEM file")
    return text


def _retry_wait(value: Any) -> float:
    # SWUpdate reads retrywait as a string (strtoul) and ignores an integer with a type-mismatch
    # warning, although its own example writes one; otad takes both forms.
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    return float(max(1, _integer(value, 0, MAX_POLL_S)))  # 0 (retry at once) becomes otad's 1 s floor


_KEYS: Dict[str, Tuple[str, Callable[[Any], Any]]] = {
    "url": ("url", _url),
    "tenant": ("tenant", _name),
    "id": ("controller_id", _name),
    "cafile": ("ca_file", _file),
    "sslcert": ("client_cert", _file),
    "sslkey": ("client_key", _file),
    "nocheckcert": ("verify_tls", lambda v: not _flag(v)),
    "usetokentodwl": ("download_without_token", lambda v: not _flag(v)),
    # SWUpdate's polldelay is the interval until the server says otherwise; in otad it is the
    # floor under the server's `sleep` (poll_min_s), the closest meaning that keeps hawkBit in charge.
    "polldelay": ("poll_min_s", lambda v: float(_integer(v, 1, MAX_POLL_S))),
    # SWUpdate's retry counts resumes after the first try (0: none), otad counts attempts.
    "retry": ("max_download_attempts", lambda v: min(MAX_ATTEMPTS, _integer(v, 0, 1 << 31) + 1)),
    "retrywait": ("backoff_cap_s", _retry_wait),
    "connection-timeout": ("connect_timeout_s", lambda v: float(_integer(v, 1, 3600))),
}
_STRING_KEYS = frozenset({"url", "tenant", "id", "cafile", "sslcert", "sslkey", "retrywait", *TOKEN_KEYS})


def _identify(value: Any, lines: "_Lines") -> Tuple[Tuple[str, str], ...]:
    """SWUpdate's `identify : ( { name = "..."; value = "..."; }, ... )`, sent as configData."""
    items = value if isinstance(value, (list, tuple)) else None
    if items is None:
        raise ConfigError(f"identify: expected a list of {{ name = ...; value = ...; }}, got {value!r}",
                          lines("identify"))
    pairs: Dict[str, str] = {}
    for index, item in enumerate(items):
        ok = isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("value"), str)
        if not ok:
            raise ConfigError(f"identify[{index}]: expected {{ name = \"...\"; value = \"...\"; }}, got {item!r}",
                              lines("identify"))
        pairs[item["name"]] = item["value"]
    return tuple(pairs.items())


def _check_token(value: str) -> None:
    # Never quote the token in an error or a log line.
    if len(value) > MAX_TOKEN_CHARS or not _TOKEN.fullmatch(value):
        raise _Bad(f"expected one word of printable ASCII up to {MAX_TOKEN_CHARS} characters "
                   f"(got {len(value)} characters)")


def token_path(state_dir: str, kind: str) -> str:
    """Where a migrated token of `kind` is kept."""
    return os.path.join(state_dir, f"hawkbit-{kind.replace('_', '-')}")


def migrate_token(value: str, state_dir: str, kind: str) -> str:
    """Keep `value` in `<state_dir>/hawkbit-<kind>` (mode 0600, written atomically); return the path.

    The file is rewritten only when it differs, so starting the daemon does not wear the flash.
    A file this process may not read is taken as stored by root.
    """
    if kind not in TOKEN_KINDS:
        raise ValueError(f"kind: expected one of {', '.join(TOKEN_KINDS)}, got {kind!r}")
    path = token_path(state_dir, kind)
    try:
        _check_token(value)
    except _Bad as exc:
        raise ConfigError(f"hawkbit {kind.replace('_', ' ')}: {exc}", path) from None
    data = value.encode("ascii") + b"\n"
    if _holds(path, data):
        return path
    try:
        os.makedirs(state_dir, exist_ok=True)
        atomic_write(path, data, mode=0o600)
    except OSError as exc:
        raise ConfigError(f"cannot store the hawkBit {kind.replace('_', ' ')} taken from swupdate.cfg: "
                          f"{exc.strerror or exc}", path) from exc
    log.info("hawkbit: the %s from swupdate.cfg is kept in %s (mode 0600)", kind.replace("_", " "), path)
    return path


def _holds(path: str, data: bytes) -> bool:
    """`path` already holds `data` and no one but its owner may read it."""
    try:
        if os.stat(path).st_mode & 0o077:
            return False
        with open(path, "rb") as f:
            return f.read(len(data) + 1) == data
    except PermissionError:
        log.debug("%s: not readable by this process; taken as stored by root", path)
        return True
    except OSError:
        return False


def _load(path: str) -> Tuple[Dict[str, Any], "_Lines"]:
    raw = read_bytes(path, "swupdate.cfg", limit=_MAX_BYTES, error=ConfigError)
    tree = libconfig.loads(raw, source=path, error=ConfigError)  # names path:line itself
    return tree, _Lines(path, raw.decode("utf-8"))


class _Lines:
    """path:line of a setting (libconf keeps no positions): comments and strings are blanked
    first, so a key inside `/* ... */` (as in SWUpdate's example) is never found."""

    def __init__(self, source: str, text: str) -> None:
        self.source = source
        self.code = _NOT_CODE.sub(lambda m: re.sub(r"[^\n]", " ", m.group()), text)

    def __call__(self, section: str, key: Optional[str] = None) -> str:
        start = self._find(section, 0, len(self.code))
        if start is None:
            return self.source
        end = self._group_end(start)
        found = self._find(key, start, end) if key is not None else None
        return f"{self.source}:{self.code.count(chr(10), 0, found if found is not None else start) + 1}"

    def _find(self, name: str, start: int, end: int) -> Optional[int]:
        m = re.compile(rf"(?<![-\w*]){re.escape(name)}\s*[=:]").search(self.code, start, end)
        return m.start() if m else None

    def _group_end(self, start: int) -> int:
        depth = 0
        for i in range(start, len(self.code)):
            if self.code[i] in "{([":
                depth += 1
            elif self.code[i] in "})]":
                depth -= 1
                if depth <= 0:
                    return i
        return len(self.code)

