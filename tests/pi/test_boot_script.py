"""otad's boot script (etc/boot.cmd, as the package compiles it) on the real U-Boot the card
boots: Debian's u-boot-rpi rpi_0_w, which has no CONFIG_BOOTCOUNT_LIMIT. Only U-Boot runs here
(power is cut when it starts the kernel), so each reset costs ~5 s, not a Linux boot. The two
cases run on two boards at once, which also shows that boards do not share anything.
"""

from __future__ import annotations

from typing import Callable, Dict, List, Tuple

from tests.pi.board import Board, BootLine, in_parallel

KERNEL_S = 60.0


def unbootable_trial(board: Board) -> Tuple[List[BootLine], List[str], Dict[str, str]]:
    """Slot 3 armed for a trial but unbootable (no kernel): boot.scr counts, cannot load a
    kernel, resets; past bootlimit it rolls back to slot 2, which boots; after a power cut the
    board comes up on slot 2 again. Returns boot.scr's lines, U-Boot's output before each of
    them, and the env left on the card by the rollback."""
    board.card.set_env({"rootpart": "3", "upgrade_available": "1", "bootcount": "0", "bootlimit": "2"})
    board.card.ext4_delete(3, "/boot/vmlinuz")
    board.power_on()
    lines, texts = [], []
    for boot in range(3):
        board.wait_uboot()
        lines.append(board.wait_boot_line())
        texts.append(board.before)
        if boot < 2:
            board.expect("otad: slot 3 did not boot", KERNEL_S, "the failed slot's message")
    board.expect("Starting kernel", KERNEL_S, "the old slot's kernel")
    board.power_cut()
    env = board.card.env()
    # Power on again on the same card: the rollback was saved, no trial is left.
    board.power_on()
    board.wait_uboot()
    lines.append(board.wait_boot_line())
    texts.append(board.before)
    board.power_cut()
    return lines, texts, env


def missing_env(board: Board) -> Tuple[BootLine, str, List[str]]:
    """No uboot.env: U-Boot runs on its compiled-in env; boot.scr boots slot 2 and saves nothing."""
    board.card.fat_delete("uboot.env")
    board.power_on()
    board.wait_uboot()
    line = board.wait_boot_line()
    text = board.before
    board.expect("Starting kernel", KERNEL_S, "slot 2's kernel")
    text += board.before
    board.power_cut()
    return line, text, list(board.card.fat_list())


def test_trial_rollback_and_missing_env_on_two_boards_at_once(make_board: Callable[..., Board]) -> None:
    rollback, fresh = make_board("rollback"), make_board("noenv")
    (lines, texts, env), (line, text, files) = in_parallel([lambda: unbootable_trial(rollback),
                                                            lambda: missing_env(fresh)])

    # Each trial boot is counted and saved before the kernel is tried; the third exceeds
    # bootlimit=2 and boots the other slot with the trial cleared, saved in the same write.
    assert lines == [BootLine("3", "1", "1", "2"), BootLine("3", "2", "1", "2"), BootLine("2", "0", "0", "2"),
                     BootLine("2", "0", "0", "2")]
    for before in texts:
        assert "Loading Environment from FAT... OK" in before
    assert [before.count("Saving Environment to FAT... OK") for before in texts] == [1, 1, 1, 0]
    assert "otad: boot 3 of slot 3 exceeds bootlimit 2: rolling back" in texts[2]
    assert "rolling back" not in texts[0] + texts[1]
    assert {k: env[k] for k in ("rootpart", "upgrade_available", "bootcount", "bootlimit")} == \
        {"rootpart": "2", "upgrade_available": "0", "bootcount": "0", "bootlimit": "2"}

    # Without uboot.env: slot 2, and the default env is not written over the missing file.
    assert line.rootpart == "2" and line.upgrade_available == ""
    assert 'Unable to read "uboot.env"' in text
    assert "otad: no rootpart 2 or 3 in the environment: booting slot 2" in text
    assert "Saving Environment" not in text
    assert "uboot.env" not in files and "boot.scr" in files
