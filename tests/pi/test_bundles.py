"""The bundles scripts/pi-image --bundle builds for the card (no board needed): signed by the
card's signer, verified against the CA the card trusts, the version asked for, one image per
slot, and the broken one saying what is broken. Installing them is the board scenarios' job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

BUNDLES = os.environ.get("OTAD_PI_BUNDLES", "")
VERSION = os.environ.get("OTAD_PI_BUNDLE_VERSION", "")


def otad_info(bundle: Path, ca: str, selection: str, device_dir: Path) -> Dict[str, Any]:
    """`otad info --json` as the card would plan it: its hardware, one slot's selection, and
    partitions as large as the card's slots (sparse files standing for /dev)."""
    result = subprocess.run([sys.executable, "-m", "otad", "info", "--json", "-k", ca, "-H", "rpi0w:1.0",
                             "-e", selection, "--device-dir", str(device_dir), str(bundle)],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    return json.loads(result.stdout)


@pytest.mark.skipif(not BUNDLES, reason="scripts/pi-test builds the bundles (OTAD_PI_BUNDLES)")
def test_good_and_broken_bundles_verify_against_the_cards_ca(card_info: Dict[str, Any], tmp_path: Path) -> None:
    good, broken = [Path(p) for p in BUNDLES.split(os.pathsep)]
    assert good.name == f"otad-pi-{VERSION}.swu" and broken.name == f"otad-pi-{VERSION}-broken.swu"
    slot_mib = {part["name"]: part["size_mib"] for part in card_info["layout"]}
    for name, slot in (("mmcblk0p2", "slot-a"), ("mmcblk0p3", "slot-b")):
        with open(tmp_path / name, "wb") as f:
            f.truncate(slot_mib[slot] << 20)
    ca = card_info["keys"]["ca"]
    infos: List[Dict[str, Any]] = [otad_info(good, ca, "stable,copy1", tmp_path),
                                   otad_info(good, ca, "stable,copy2", tmp_path),
                                   otad_info(broken, ca, "stable,copy2", tmp_path)]
    for info in infos:
        assert info["ok"] and info["signature"] == "verified" and info["version"] == VERSION
        assert [(",".join(s["selection"]), [e["target"] for e in s["entries"]]) for s in info["selections"]] == [
            ("stable,copy1", ["/dev/mmcblk0p2"]), ("stable,copy2", ["/dev/mmcblk0p3"])]
        assert all(e["hash_ok"] for s in info["selections"] for e in s["entries"])
    assert "broken" not in infos[0]["description"] and "broken: init exits" in infos[2]["description"]
