"""Turn the configuration (file plus command-line overrides) into an `InstallRequest`.

Owns the choices that are policy rather than mechanism: which verifier a device trusts,
where its hardware identity comes from, that unsigned bundles need an explicit opt-in.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Optional, Tuple

from otad.config import Config
from otad.errors import ConfigError
from otad.install.chunks import DeltaOptions
from otad.install.plan import InstallRequest
from otad.install.versionpolicy import VersionPolicy
from otad.smallfile import read_text
from otad.swu.crypto import AesKey, load_key_file
from otad.swu.manifest import HardwareRevision

if TYPE_CHECKING:
    from otad.swu.signature import Verifier

log = logging.getLogger(__name__)


def make_verifier(config: Config) -> Optional[Verifier]:
    from otad.swu.signature import CmsVerifier, RsaVerifier, TrustedTime  # cryptography: ~11 MB, on first use

    """The verifier the config asks for; None only when unsigned bundles were allowed."""
    install = config.install
    if install.allow_unsigned:
        return None
    if install.signature == "rsa":
        return RsaVerifier.from_file(install.trust_file)
    return CmsVerifier.from_file(
        install.trust_file,
        purpose=install.cert_purpose,
        forced_signer_name=install.forced_signer_name,
        trusted_time=TrustedTime(install.time_floor_datetime),
    )


def info_verifier(config: Config) -> Tuple[Optional[Verifier], Optional[str]]:
    """For `otad info`: the verifier, or None and why the signature goes unchecked. Unlike an
    install, a missing trust file only skips the check."""
    install = config.install
    if install.allow_unsigned:
        return None, "signature not checked: --insecure-allow-unsigned"
    if not os.path.exists(install.trust_file):
        return None, f"signature not checked: trust file {install.trust_file} not found (use -k)"
    return make_verifier(config), None


def hardware_identity(config: Config) -> Optional[HardwareRevision]:
    """`system.hardware` if set, else /etc/hwrevision if it exists, else unknown."""
    if config.system.hardware:
        return HardwareRevision.parse(config.system.hardware)
    path = config.system.hwrevision_file
    text = read_text(path, "the hardware revision", limit=64 << 10, error=ConfigError, missing_ok=True)
    return HardwareRevision.from_hwrevision_file(text, path) if text is not None else None


def make_request(config: Config, *, dry_run: bool = False,
                 selection: Optional[Tuple[str, str]] = None) -> InstallRequest:
    install = config.install
    return InstallRequest(
        verifier=make_verifier(config),
        hardware=hardware_identity(config),
        selection=selection or install.selection_pair,
        check_hardware=install.check_hardware,
        dry_run=dry_run,
        device_dir=config.system.device_dir,
        chunk_bytes=install.chunk_kib << 10,
        zstd_max_window=install.zstd_max_window_mib << 20,
        aes_key=aes_key(config),
        version_policy=version_policy(config),
        work_dir=work_dir(config),
        ext4_resize=install.ext4_resize,
        files_via=install.files_via,
        script_timeout_s=install.script_timeout_s,
        delta=delta_options(config),
    )


def delta_options(config: Config) -> DeltaOptions:
    """The `delta` section; where chunks come from is the caller's to add (`sources`)."""
    delta = config.delta
    return DeltaOptions(state_dir=config.system.state_dir, max_ranges=delta.max_ranges,
                        min_interval_s=delta.min_interval_s, libzck=delta.libzck, python_index=delta.python_index,
                        checkpoint_bytes=delta.checkpoint_mib << 20)


def work_dir(config: Config) -> str:
    """Where scripts, spooled files and mount points live during an install: on disk, in the
    state directory (on the Pi /tmp is RAM)."""
    return os.path.join(config.system.state_dir, "tmp")


def aes_key(config: Config) -> Optional[AesKey]:
    """The device's AES key, read now: a bad key file fails every install, as in SWUpdate."""
    path = config.install.aes_key_file
    return load_key_file(path) if path else None


def version_policy(config: Config) -> VersionPolicy:
    install = config.install
    return VersionPolicy(min_version=install.min_version, max_version=install.max_version,
                         no_reinstall=install.no_reinstall, sw_versions_file=config.system.sw_versions_file)


def status_file(config: Config) -> str:
    return os.path.join(config.system.state_dir, "targets.json")
