"""Fuzzing every parser that reads bytes from outside: only otad's own error may come out.

otad.conf (`config.parse`: ConfigError), fw_env.config (`fwenvconfig`: ConfigError) and env
images (`envimage`: None), hawkBit's DDI JSON (`ddi.parse_*`, and raw bodies through a real
`DdiClient`: an OtadError), and real signed bundles, mutated, through the CPIO reader, the
sw-description parser and a dry-run `install_bundle` (an OtadError). Sizes: OTAD_FUZZ_EXAMPLES
examples per test (CI: 200), no deadline. A crash found becomes an `@example` here.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Tuple

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from otad import config
from otad.boot.envimage import build_image, parse_image
from otad.boot.fwenvconfig import parse_fw_env_config
from otad.boot.slots import SlotTable
from otad.errors import ConfigError, OtadError
from otad.hawkbit.ddi import DdiClient, HawkbitSettings, parse_cancel, parse_deployment, parse_root
from otad.install.installer import InstallRequest, install_bundle
from otad.sim.device import DEFAULT_ENV, ENV_SIZE
from otad.swu.cpio import CpioReader
from otad.swu.manifest import HardwareRevision
from otad.swu.signature import CmsVerifier
from tests.bundles import ImageSpec, description, gz, signed_members, write_bundle
from tests.hawkbit_fakes import DdiFake
from tests.pki import Pki
from tests.reliability.conftest import REPO, fuzz_examples
from tests.reliability.report import Recorder
from tests.unit.swu.test_cpio_fuzz import mutate, mutation
from tests.unit.swu.test_manifest_fuzz import BOARDS, SELECTIONS, exercise, libconfig_text

SECTION = "Fuzzing: hostile input gives otad's own error, nothing else"
FUZZ = settings(max_examples=fuzz_examples(), deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
URL = "http://127.0.0.1:8080/DEFAULT/controller/v1/dev-01"


class Counted:
    """Counts the examples a hypothesis run tried, for the report."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> None:
        self.n += 1


FOUND = ("Found by this suite and fixed (each now an `@example` in tests/reliability/test_fuzz.py): a DDI body "
         "nested deeper than ~1000 levels made `json.loads` raise RecursionError, which `DdiClient._json` and "
         "`_error_fields` let through (a server could stop the daemon's loop); an href or `hawkbit.url` with an "
         "unbalanced `[` or `]` made urllib raise ValueError(\"Invalid IPv6 URL\") out of `parse_root`, "
         "`parse_deployment`, `config.parse` and `suricatta` (found by atheris within seconds).")


def fuzz(record: Recorder, fault: str, where: str, expected: str, run: Callable[[Counted], None]) -> None:
    record.note(SECTION, FOUND)
    seen = Counted()
    try:
        run(seen)
    except BaseException as exc:
        record.add(SECTION, fault, where, expected, f"{type(exc).__name__}: {str(exc)[:200]}", False)
        raise
    record.add(SECTION, fault, where, expected, f"{seen.n} inputs, none escaped as another exception", True)


def mutate_text(text: str, edits: List[Tuple[int, int, str]]) -> str:
    for position, cut, insert in edits:
        at = position % (len(text) + 1)
        text = text[:at] + insert + text[at + cut:]
    return text


text_edits = st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 6),
                                st.text(alphabet=st.sampled_from(list('{}()[];:=,"#@./\\ \n\t-0xL19truefals_abc')),
                                        max_size=6)), min_size=1, max_size=5)


# --------------------------------------------------------------------------- otad.conf


CONFIG_TEXT = (REPO / "etc" / "otad.conf").read_text(encoding="utf-8")
CONFIG_KEYS = sorted({f for cls in (config.SystemConfig, config.InstallConfig, config.BootloaderConfig,
                                    config.SlotConfig, config.HealthConfig, config.WatchdogConfig,
                                    config.HawkbitConfig) for f in cls.__dataclass_fields__}
                     - {"swupdate_cfg"})  # reads (and may migrate a token from) a file named in it
CONFIG_SCALARS = st.one_of(
    st.sampled_from(["", "/dev/mmcblk0p2", "2", "stable,copy1", "a", "cms", "rsa", "none", "target_token",
                     "http://h:8080", "https://h/x?y", "http://[", "http://h]:1/", "2026-11-25", "1970-01-01",
                     "rpi0w:1.0", "auto", "mount",
                     "/var/lib/otad", "0x10"]),
    st.booleans(), st.integers(-(2**40), 2**40), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8))
CONFIG_TREES = st.dictionaries(
    st.sampled_from(["system", "install", "bootloader", "slots", "health", "watchdog", "hawkbit", "other"]),
    st.one_of(st.dictionaries(st.sampled_from(CONFIG_KEYS), st.one_of(CONFIG_SCALARS, st.lists(CONFIG_SCALARS,
                                                                                               max_size=3)),
                              max_size=6),
              st.lists(st.dictionaries(st.sampled_from(CONFIG_KEYS), CONFIG_SCALARS, max_size=5), max_size=3),
              CONFIG_SCALARS),
    max_size=4)


def parse_config(text: str) -> None:
    try:
        cfg = config.parse(text, source="fuzz.conf")
    except ConfigError:
        return
    if cfg.ab_enabled:
        SlotTable.from_config(cfg)


def config_tree_text(tree: Dict[str, Any]) -> str:
    return "".join(f"{key} = {libconfig_text(value)};\n" for key, value in tree.items())


# Found by atheris (scripts/reliability): urllib raises ValueError("Invalid IPv6 URL") for an
# unbalanced bracket; config.parse let it through (fixed in config._http_url, suricatta._url and
# ddi.HawkbitSettings).
BRACKET_URL_CONF = 'hawkbit = { url = "http://["; controller_id = "dev-01"; };\n'


def test_config_parse_raises_only_config_error(record: Recorder) -> None:
    def run(seen: Counted) -> None:
        @FUZZ
        @example(BRACKET_URL_CONF)
        @given(st.one_of(text_edits.map(lambda e: mutate_text(CONFIG_TEXT, e)),
                         st.text(alphabet=st.sampled_from(list('system={}()[];:=,"#@/\\ \n\tabc019-.xL')),
                                 max_size=300),
                         CONFIG_TREES.map(config_tree_text)))
        def check(text: str) -> None:
            seen()
            parse_config(text)
        check()

    fuzz(record, "mutated etc/otad.conf, libconfig-alphabet text, trees of real section and key names",
         "otad.config.parse", "ConfigError only", run)


# --------------------------------------------------------------------------- fw_env.config and env images


FW_ENV_TEXTS = [(REPO / "etc" / name).read_text(encoding="utf-8")
                for name in ("fw_env.config", "fw_env.config.redundant")]


def test_fw_env_config_parse_raises_only_config_error(record: Recorder) -> None:
    def run(seen: Counted) -> None:
        @FUZZ
        @given(st.sampled_from(FW_ENV_TEXTS), text_edits, st.text(max_size=200))
        def check(base: str, edits: List[Tuple[int, int, str]], noise: str) -> None:
            seen()
            for text in (mutate_text(base, edits), noise):
                try:
                    layout = parse_fw_env_config(text, source="fuzz")
                except ConfigError:
                    continue
                assert 1 <= len(layout.copies) <= 2
        check()

    fuzz(record, "mutated etc/fw_env.config(.redundant), random text", "fwenvconfig.parse_fw_env_config",
         "ConfigError only", run)


def crc_fixed(image: bytes, redundant: bool) -> bytes:
    """`image` with its CRC recomputed, so the mutation reaches the entry decoder."""
    import struct
    import zlib

    header = 5 if redundant else 4
    return struct.pack("<I", zlib.crc32(image[header:])) + image[4:]


def test_env_image_parse_returns_variables_or_none(record: Recorder) -> None:
    images = {r: build_image(DEFAULT_ENV, ENV_SIZE, redundant=r, flags=3) for r in (False, True)}

    def run(seen: Counted) -> None:
        @FUZZ
        @given(st.booleans(), st.lists(mutation, min_size=1, max_size=6), st.booleans(),
               st.sampled_from([ENV_SIZE, ENV_SIZE - 1, 0x2000, 6, 5, 0]))
        def check(redundant: bool, mutations: List[Tuple[str, int, int]], fix_crc: bool, size: int) -> None:
            seen()
            blob = mutate(images[redundant], mutations)
            if fix_crc and len(blob) > 5:
                blob = crc_fixed(blob, redundant)
            result = parse_image(blob, size, redundant=redundant)
            assert result is None or all(isinstance(k, str) and isinstance(v, str) for k, v in result.items())
        check()

    fuzz(record, "mutated real env images (flips, cuts, inserts), CRC recomputed or not, odd sizes",
         "envimage.parse_image", "a dict of strings or None", run)


# --------------------------------------------------------------------------- DDI JSON


DDI_KEYS = ["config", "polling", "sleep", "_links", "deploymentBase", "cancelAction", "configData", "installedBase",
            "confirmationBase", "href", "id", "deployment", "download", "update", "maintenanceWindow", "chunks",
            "part", "version", "name", "artifacts", "filename", "size", "hashes", "sha256", "sha1", "md5",
            "download-http", "metadata", "key", "value", "stopId", "actionHistory"]
JSON_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True),
    st.text(max_size=12),
    st.sampled_from(["00:00:10", "99:99:99", "-1:00:00", "00:00:00", "forced", "attempt", "skip", "available",
                     "unavailable", "http://h/x", "/relative", "https://", "ftp://h/x", "http://[::1", "//a]/",
                     "a" * 64, "0" * 40, "update.swu"]))


def json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.one_of(st.sampled_from(DDI_KEYS), st.text(max_size=6))
    return st.one_of(st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=6))


JSON_VALUES = st.recursive(JSON_SCALARS, json_containers, max_leaves=30)

ART = {"filename": "update.swu", "size": 1234,
       "hashes": {"sha256": "a" * 64, "sha1": "b" * 40, "md5": "c" * 32},
       "_links": {"download": {"href": "http://127.0.0.1:8080/DEFAULT/controller/v1/dev-01/softwaremodules/7/"
                                       "artifacts/update.swu"},
                  "download-http": {"href": "http://127.0.0.1:8080/x/update.swu"}}}
VALID_BODIES: Dict[str, Any] = {
    "root": {"config": {"polling": {"sleep": "00:05:00"}},
             "_links": {"deploymentBase": {"href": f"{URL}/deploymentBase/8?c=1"},
                        "configData": {"href": f"{URL}/configData"},
                        "installedBase": {"href": f"{URL}/installedBase/7"}}},
    "deployment": {"id": "8", "deployment": {"download": "forced", "update": "attempt",
                                             "maintenanceWindow": "available",
                                             "chunks": [{"part": "os", "version": "2.0", "name": "rootfs",
                                                         "artifacts": [ART],
                                                         "metadata": [{"key": "k", "value": "v"}]}]},
                   "actionHistory": {"status": "RUNNING", "messages": []}},
    "cancel": {"id": "9", "cancelAction": {"stopId": "8"}},
}


def paths_of(value: Any, prefix: Tuple[Any, ...] = ()) -> Iterator[Tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for key, item in value.items():
            yield from paths_of(item, prefix + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from paths_of(item, prefix + (index,))


@st.composite
def mutated_bodies(draw: st.DrawFn) -> Tuple[str, Any]:
    kind = draw(st.sampled_from(sorted(VALID_BODIES)))
    body = copy.deepcopy(VALID_BODIES[kind])
    for _ in range(draw(st.integers(1, 3))):
        paths = list(paths_of(body))
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(["replace", "delete", "wrap"]))
        if not path:
            body = draw(JSON_VALUES) if op == "replace" else [body] if op == "wrap" else None
            continue
        parent = body
        for part in path[:-1]:
            parent = parent[part]
        if op == "delete":
            del parent[path[-1]]
        elif op == "wrap":
            parent[path[-1]] = [parent[path[-1]]]
        else:
            parent[path[-1]] = draw(JSON_VALUES)
    return kind, body


PARSERS = {"root": parse_root, "deployment": parse_deployment, "cancel": parse_cancel}

# Found by atheris (scripts/reliability): an href with an unbalanced '[' made urljoin raise
# ValueError out of parse_root/parse_deployment, through the daemon's loop (fixed in ddi._Fields.href).
BRACKET_HREFS = [
    ("root", {"config": {"polling": {"sleep": "00:05:00"}}, "_links": {"deploymentBase": {"href": "http://["}}}),
    ("deployment", {**VALID_BODIES["deployment"], "deployment": {
        **VALID_BODIES["deployment"]["deployment"], "chunks": [{
            "part": "os", "version": "2.0", "name": "rootfs", "artifacts": [{
                **ART, "_links": {"download": {"href": "http://063.0.0.[1:8080/DEFAULT/controller/v0/dev-01/x"}}}]}]}}),
]


def parse_ddi(kind: str, body: Any) -> None:
    try:
        result = PARSERS[kind](body, URL)
        if kind == "deployment":
            result.swu_artifact()  # what the daemon asks next
    except OtadError:
        pass


def test_ddi_json_parsers_raise_only_otad_errors(record: Recorder) -> None:
    def run(seen: Counted) -> None:
        @FUZZ
        @example(BRACKET_HREFS[0])
        @example(BRACKET_HREFS[1])
        @given(st.one_of(mutated_bodies(), st.tuples(st.sampled_from(sorted(PARSERS)), JSON_VALUES)))
        def check(case: Tuple[str, Any]) -> None:
            seen()
            parse_ddi(*case)
        check()

    fuzz(record, "valid root/deployment/cancel bodies with subtrees replaced, deleted or wrapped; arbitrary JSON",
         "hawkbit.ddi.parse_root/parse_deployment/parse_cancel (+ Deployment.swu_artifact)", "OtadError only", run)


@pytest.fixture(scope="module")
def ddi_fake() -> Iterator[DdiFake]:
    with DdiFake() as fake:
        yield fake


DEEP = b"[" * 5000  # json.loads raises RecursionError (not a ValueError) past ~1000 levels


def test_raw_ddi_bodies_through_the_client_raise_only_otad_errors(record: Recorder, ddi_fake: DdiFake) -> None:
    settings = HawkbitSettings(url=ddi_fake.url, controller_id=ddi_fake.controller_id, read_timeout_s=5,
                               connect_timeout_s=5)

    def run(seen: Counted) -> None:
        @FUZZ
        @example(body=DEEP, status=200)
        @example(body=DEEP, status=500)
        @example(body=b'{"errorCode": ' * 5000, status=404)
        @given(body=st.one_of(st.binary(max_size=300), JSON_VALUES.map(lambda v: json.dumps(v).encode()),
                              st.sampled_from([b"", b"null", b"\xff\xfe", b'{"config": {"polling": {"sleep": 5}}}'])),
               status=st.sampled_from([200, 200, 200, 400, 404, 409, 410, 429, 500, 503]))
        def check(body: bytes, status: int) -> None:
            seen()
            ddi_fake._faults.clear()
            ddi_fake.fault("root", status=status, body=body)
            # A new connection each time: a kept-alive one costs a 40 ms delayed ACK per request here.
            with contextlib.closing(DdiClient(settings)) as client:
                try:
                    client.poll()
                except OtadError:
                    pass
        check()

    fuzz(record, "raw root answers: random bytes, random JSON, deeply nested arrays, with 2xx/4xx/5xx",
         "hawkbit.ddi.DdiClient.poll (_json, _error_fields)", "OtadError only", run)


# --------------------------------------------------------------------------- real bundles, mutated


@pytest.fixture(scope="module")
def fuzz_bundle(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Tuple[bytes, Path, str]:
    """A real signed bundle: a gzip image and a raw one, set/mode selection, small enough to mutate."""
    work = tmp_path_factory.mktemp("fuzz-bundle")
    dev = work / "dev"
    dev.mkdir()
    for name in ("mmcblk0p2", "mmcblk0p3", "mmcblk0p4"):
        (dev / name).write_bytes(bytes(64 << 10))
    images = [ImageSpec("rootfs.img.gz", gz(b"OTAD" + bytes(range(256)) * 24), "/dev/mmcblk0p3", compressed="zlib"),
              ImageSpec("boot.img", bytes(range(256)) * 4, "/dev/mmcblk0p4")]
    desc = description(images, version="2.0", selection=("stable", "copy2"))
    data = write_bundle(work / "fuzz.swu", signed_members(desc, images, pki, work)).read_bytes()
    return data, dev, str(pki.ca_pem)


early_mutation = st.one_of(mutation, st.tuples(st.sampled_from(["flip", "digit", "insert", "delete"]),
                                               st.integers(0, 2048), st.integers(1, 255)))


def test_mutated_real_bundles_raise_only_otad_errors(record: Recorder, fuzz_bundle: Tuple[bytes, Path, str]) -> None:
    data, dev, ca = fuzz_bundle
    verifier = CmsVerifier.from_file(ca)
    requests = {signed: InstallRequest(verifier=verifier if signed else None, hardware=HardwareRevision("rpi0w", "1.0"),
                                       selection=("stable", "copy2"), dry_run=True, device_dir=str(dev))
                for signed in (True, False)}
    for signed in (True, False):
        assert install_bundle(io.BytesIO(data), requests[signed]).dry_run  # the unmutated bundle installs

    def run(seen: Counted) -> None:
        @FUZZ
        @given(st.lists(early_mutation, min_size=1, max_size=4), st.booleans())
        def check(mutations: List[Tuple[str, int, int]], signed: bool) -> None:
            seen()
            bundle = mutate(data, mutations)
            try:
                for member in CpioReader(io.BytesIO(bundle)):
                    member.read_all(limit=1 << 20)
            except OtadError:
                pass
            try:
                install_bundle(io.BytesIO(bundle), requests[signed], name="fuzz.swu")
            except OtadError:
                pass
        check()

    fuzz(record, "a real signed bundle (gzip + raw image) with 1-4 flips, cuts, inserts, deletes (biased to the "
                 "headers and sw-description), signed and unsigned", "swu.cpio.CpioReader, installer.install_bundle "
         "(dry run: signature, manifest, plan, stream, hashes)", "OtadError only", run)


def test_mutated_sw_description_of_a_real_bundle(record: Recorder, fuzz_bundle: Tuple[bytes, Path, str]) -> None:
    data = fuzz_bundle[0]
    desc = next(m.read_all(limit=1 << 20) for m in CpioReader(io.BytesIO(data)) if m.name == "sw-description")

    def run(seen: Counted) -> None:
        @FUZZ
        @given(st.lists(st.tuples(st.integers(0, len(desc)), st.integers(0, 4), st.binary(max_size=6)), min_size=1,
                        max_size=4), BOARDS, SELECTIONS)
        def check(edits: List[Tuple[int, int, bytes]], board: Any, selection: Any) -> None:
            seen()
            text = desc
            for position, cut, insert in edits:
                text = text[:position] + insert + text[position + cut:]
            exercise(text, board, selection)
        check()

    fuzz(record, "the sw-description of a real bundle, bytes cut and inserted", "swu.manifest.parse + select + "
         "hardware checks", "ManifestError or CompatibilityError only", run)


# --------------------------------------------------------------------------- atheris (scripts/reliability)


def atheris_targets(work: Path, pki: Pki) -> Dict[str, Tuple[Callable[[bytes], None], List[bytes]]]:
    """name → (one input in, the seeds to start from), for coverage-guided runs by atheris.
    Each target lets only the errors the hypothesis tests above allow escape."""
    dev = work / "dev"
    dev.mkdir(parents=True, exist_ok=True)
    for name in ("mmcblk0p2", "mmcblk0p3", "mmcblk0p4"):
        (dev / name).write_bytes(bytes(64 << 10))
    images = [ImageSpec("rootfs.img.gz", gz(b"OTAD" + bytes(range(256)) * 24), "/dev/mmcblk0p3", compressed="zlib"),
              ImageSpec("boot.img", bytes(range(256)) * 4, "/dev/mmcblk0p4")]
    desc = description(images, version="2.0", selection=("stable", "copy2"))
    bundle = write_bundle(work / "seed.swu", signed_members(desc, images, pki, work)).read_bytes()
    unsigned = InstallRequest(verifier=None, hardware=HardwareRevision("rpi0w", "1.0"), selection=("stable", "copy2"),
                              dry_run=True, device_dir=str(dev))

    def text(data: bytes) -> str:
        return data.decode("utf-8", "surrogateescape")

    def env_image(data: bytes) -> None:
        redundant = bool(data[:1]) and data[0] & 1 == 1
        parse_image(data[1:], max(len(data) - 1, 6), redundant=redundant)

    def ddi(data: bytes) -> None:
        kind = sorted(PARSERS)[data[0] % 3] if data else "root"
        try:
            body = json.loads(data[1:].decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            return  # DdiClient turns these into MalformedResponse (test above)
        parse_ddi(kind, body)

    def bundle_target(data: bytes) -> None:
        try:
            install_bundle(io.BytesIO(data), unsigned, name="fuzz.swu")
        except OtadError:
            pass

    def manifest_target(data: bytes) -> None:
        exercise(data, "rpi0w", ("stable", "copy2"))

    def fw_env(data: bytes) -> None:
        try:
            parse_fw_env_config(text(data), source="fuzz")
        except ConfigError:
            pass

    ddi_seeds = [bytes([i]) + json.dumps(VALID_BODIES[k]).encode() for i, k in enumerate(sorted(PARSERS))]
    return {
        "config": (lambda data: parse_config(text(data)), [CONFIG_TEXT.encode()]),
        "fw_env_config": (fw_env, [t.encode() for t in FW_ENV_TEXTS]),
        "env_image": (env_image, [b"\0" + build_image(DEFAULT_ENV, 0x1000, redundant=False),
                                  b"\1" + build_image(DEFAULT_ENV, 0x1000, redundant=True, flags=1)]),
        "ddi_json": (ddi, ddi_seeds),
        "bundle": (bundle_target, [bundle]),
        "sw_description": (manifest_target, [desc]),
    }
