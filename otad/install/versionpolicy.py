"""Version policy: which bundles a device accepts and which entries it skips, as SWUpdate 2022.12.

Bundle level: `-N` (nothing older), `--max-version` (nothing newer), `-R` (not this exact string).
Entry level: `install-if-different` / `install-if-higher` against /etc/sw-versions. Pure functions
over a Manifest plus a thin reader for sw-versions; the comparison itself is swu/version.py.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple, Union

from otad.errors import CompatibilityError, ConfigError
from otad.smallfile import read_text
from otad.swu.manifest import File, Image, Manifest
from otad.swu.version import compare

log = logging.getLogger(__name__)

Gated = Union[Image, File]  # the entries that carry name, version and the install-if flags
Installed = Mapping[str, str]  # component name → installed version, from sw-versions


@dataclass(frozen=True)
class VersionPolicy:
    """The device's rules. None everywhere: every bundle and every entry is installed."""

    min_version: Optional[str] = None  # -N: refuse a bundle older than this (anti-rollback)
    max_version: Optional[str] = None  # --max-version: refuse a bundle newer than this
    no_reinstall: Optional[str] = None  # -R: refuse a bundle whose version string is exactly this
    sw_versions_file: Optional[str] = None  # installed components; None: none known


def check_bundle_version(version: str, policy: VersionPolicy, source: str = "sw-description") -> None:
    """CompatibilityError when the bundle's `version` breaks -N, --max-version or -R. Equal to
    the minimum or the maximum is allowed (SWUpdate refuses only strictly lower / higher)."""
    if policy.min_version is not None and compare(version, policy.min_version) < 0:
        raise CompatibilityError(f"bundle version {version!r} is lower than the minimum version "
                                 f"{policy.min_version!r} (-N / install.min_version): downgrade refused", source)
    if policy.max_version is not None and compare(version, policy.max_version) > 0:
        raise CompatibilityError(f"bundle version {version!r} is higher than the maximum version "
                                 f"{policy.max_version!r} (--max-version / install.max_version)", source)
    if policy.no_reinstall is not None and version == policy.no_reinstall:
        raise CompatibilityError(f"bundle version {version!r} equals {policy.no_reinstall!r}, which must not be "
                                 "installed again (-R / install.no_reinstall)", source)


def skip_reason(entry: Gated, installed: Installed) -> Optional[str]:
    """Why SWUpdate would skip `entry`, or None to install it. An entry needs a name, a version
    and a flag to be gated; a component that sw-versions does not list is installed.

    install-if-different compares with compare() like SWUpdate 2022.12 (so "1.0" equals
    "1.0.0"), not as strings; install-if-higher installs only a strictly higher version.
    """
    if not (entry.name and entry.version and (entry.install_if_different or entry.install_if_higher)):
        return None
    current = installed.get(entry.name)
    if current is None:
        return None
    order = compare(entry.version, current)
    if entry.install_if_different and order == 0:
        return f"{entry.name} {entry.version} is already installed (sw-versions: {current}; install-if-different)"
    if entry.install_if_higher and order <= 0:
        return (f"{entry.name} {entry.version} is not higher than the installed {current} "
                "(install-if-higher)")
    return None


def drop_skipped(manifest: Manifest, installed: Installed) -> Tuple[Manifest, List[Tuple[Gated, str]]]:
    """The manifest without the entries the version rules skip, and those entries with why.
    Skipping everything is refused, as SWUpdate's "Found nothing to install"."""
    skipped: List[Tuple[Gated, str]] = []

    def keep(entry: Gated) -> bool:
        reason = skip_reason(entry, installed)
        if reason is not None:
            skipped.append((entry, reason))
        return reason is None

    images = tuple(e for e in manifest.images if keep(e))
    files = tuple(e for e in manifest.files if keep(e))
    if skipped and not (images or files or manifest.scripts or manifest.bootenv):
        raise CompatibilityError(f"nothing to install: every entry is skipped by its version rule "
                                 f"({skipped[0][1]})", manifest.source)
    return dataclasses.replace(manifest, images=images, files=files), skipped


def parse_sw_versions(text: str, source: str) -> Dict[str, str]:
    """SWUpdate's sw-versions: one `name version` pair per line, blank lines allowed. A line
    with another number of words, or a name listed twice, is a ConfigError naming the line."""
    versions: Dict[str, str] = {}
    lines: Dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split()
        if not words:
            continue
        if len(words) != 2:
            raise ConfigError(f"expected 'name version' (two words), got {len(words)} word(s): {_show(line)}",
                              f"{source}:{number}")
        name, version = words
        if name in versions:
            raise ConfigError(f"{name!r} listed twice (first on line {lines[name]}); expected one version per "
                              "component", f"{source}:{number}")
        versions[name], lines[name] = version, number
    return versions


def read_sw_versions(path: str) -> Dict[str, str]:
    """The file at `path`; a missing file means nothing is installed (as in SWUpdate)."""
    text = read_text(path, "the installed versions", limit=1 << 20, error=ConfigError, missing_ok=True)
    if text is None:
        log.info("%s does not exist: every version-gated entry is installed", path)
        return {}
    return parse_sw_versions(text, path)


def apply(manifest: Manifest, policy: VersionPolicy) -> Manifest:
    """Check the bundle version, then drop the skipped entries (each logged). sw-versions is read
    only when some entry is gated, so a device without version gates never depends on it."""
    check_bundle_version(manifest.version, policy, manifest.source)
    entries: Tuple[Gated, ...] = (*manifest.images, *manifest.files)
    if not any(e.install_if_different or e.install_if_higher for e in entries):
        return manifest
    installed = read_sw_versions(policy.sw_versions_file) if policy.sw_versions_file else {}
    kept, skipped = drop_skipped(manifest, installed)
    for entry, reason in skipped:
        log.info("skipping %r: %s", entry.filename, reason)
    return kept


def _show(line: str) -> str:
    text = repr(line.strip())
    return text if len(text) <= 80 else text[:77] + "..."
