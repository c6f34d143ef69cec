"""Full-system tests on the emulated Pi Zero W: run by scripts/pi-test, which builds the card
(scripts/pi-image) and points OTAD_PI_CARD at it. Without it (scripts/test, a plain pytest run)
nothing here is collected: these tests need root's card build, QEMU and minutes per boot.

Environment (set by scripts/pi-test):
  OTAD_PI_CARD      the card image scripts/pi-image built (never written: each board gets a copy)
  OTAD_PI_INFO      its info.json (versions, layout, keys)
  OTAD_PI_BUNDLES   the good and the broken bundle of scripts/pi-image --bundle (os.pathsep
                    between them), OTAD_PI_BUNDLE_VERSION their version
  OTAD_PI_LOGS      where console logs are kept (default: the test's tmp_path)
  OTAD_PI_BOOTARGS  extra kernel arguments for the emulator's boards (default: none; e.g.
                    modprobe.blacklist=hci_uart,btbcm,vc4,brcmfmac, which was measured and gave
                    no consistent gain, docs/deploying.md section 9)
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest

CARD = os.environ.get("OTAD_PI_CARD")
collect_ignore_glob = [] if CARD else ["test_*.py"]


@pytest.fixture(scope="session")
def golden_card() -> Path:
    assert CARD is not None
    return Path(CARD)


@pytest.fixture(scope="session")
def card_info() -> Dict[str, Any]:
    path = os.environ.get("OTAD_PI_INFO") or str(Path(CARD or ".").parent / "info.json")
    return json.loads(Path(path).read_text())


@pytest.fixture
def log_dir(tmp_path: Path, request: pytest.FixtureRequest) -> Path:
    keep = os.environ.get("OTAD_PI_LOGS")
    path = Path(keep) / request.node.name if keep else tmp_path
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def make_board(golden_card: Path, tmp_path: Path, log_dir: Path) -> Iterator[Callable[..., Any]]:
    """make_board(name="pi", **Board options) -> a powered-off Board on a fresh copy of the card,
    prepared for the emulator. Every board is closed (QEMU killed) when the test ends."""
    from tests.pi.board import Board
    from tests.pi.card import Card

    boards: List[Board] = []

    def make(name: str = "pi", bootargs: Optional[str] = None, **options: Any) -> Board:
        card = Card.copy_of(golden_card, tmp_path / f"{name}.img")
        card.prepare_for_emulator(os.environ.get("OTAD_PI_BOOTARGS", "") if bootargs is None else bootargs)
        board = Board(card, log_dir, name=name, **options)
        boards.append(board)
        return board

    yield make
    for board in boards:
        board.close()

