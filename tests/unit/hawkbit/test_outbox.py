"""The feedback outbox: persisted before put returns, latest progress only, finals kept until the
server has them, and every DDI answer a feedback can get (200, 410, 404, 405, 429, no answer)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, List, Optional, Sequence

import pytest

from otad.errors import StateCorrupt, StateError
from otad.hawkbit.ddi import (AuthError, Conflict, Gone, NotFound, QuotaExceeded, Rejected, ServerError,
                              ServerUnavailable)
from otad.hawkbit.outbox import Outbox, PendingFeedback

URL = "http://hawkbit.test/DEFAULT/controller/v1/dev-01/deploymentBase/7/feedback"


class FakeSend:
    """Records what is sent; raises the scripted errors in turn (None: accepted)."""

    def __init__(self, *answers: Optional[BaseException]) -> None:
        self.answers = list(answers)
        self.sent: List[PendingFeedback] = []

    def __call__(self, entry: PendingFeedback) -> None:
        self.sent.append(entry)
        answer = self.answers.pop(0) if self.answers else None
        if answer is not None:
            raise answer

    @property
    def summary(self) -> List[Any]:
        return [(e.action_id, e.execution, e.details) for e in self.sent]


def err(cls: type, status: Optional[int]) -> ServerError:
    error: ServerError = cls(f"HTTP {status}", URL, status)
    return error


@pytest.fixture
def path(tmp_path: Path) -> str:
    return str(tmp_path / "outbox.json")


def shape(entries: Sequence[PendingFeedback]) -> List[Any]:
    return [(e.action_id, e.execution, e.details, e.final) for e in entries]


# ----------------------------------------------------------------------------- queueing


def test_put_is_persisted_before_it_returns_and_a_new_instance_sees_it(path: str) -> None:
    box = Outbox(path, clock=lambda: 1234.5)
    entry = box.put("7", "closed", "success", ("trial boot of b confirmed",), final=True)
    assert entry == PendingFeedback(1, "7", "closed", "success", ("trial boot of b confirmed",), None, False,
                                    True, 1234.5)
    again = Outbox(path)
    assert again.pending() == (entry,)
    assert again.has_final("7") and not again.has_final("8")


def test_seq_numbers_keep_growing_across_instances_and_flushes(path: str) -> None:
    box = Outbox(path)
    box.put("1", "proceeding", "none")
    box.flush(FakeSend())
    assert box.pending() == ()
    assert Outbox(path).put("2", "proceeding", "none").seq == 2


def test_an_intermediate_replaces_the_older_intermediates_of_its_action(path: str) -> None:
    box = Outbox(path)
    box.put("7", "proceeding", "none", ("Downloaded 10%",), (10, 100))
    box.put("8", "proceeding", "none", ("other action",))
    box.put("7", "canceled", "none", ("cancel endpoint",), cancel=True)
    latest = box.put("7", "proceeding", "none", ("Downloaded 20%",), (20, 100))
    assert shape(box.pending()) == [("8", "proceeding", ("other action",), False),
                                    ("7", "canceled", ("cancel endpoint",), False),
                                    ("7", "proceeding", ("Downloaded 20%",), False)]
    assert box.pending()[-1] == latest and latest.progress == (20, 100)
    assert Outbox(path).pending() == box.pending()


def test_finals_are_never_replaced_or_dropped_by_later_puts(path: str) -> None:
    box = Outbox(path)
    box.put("7", "proceeding", "none", ("Installing",))
    box.put("7", "closed", "failure", ("hash mismatch",), final=True)
    box.put("7", "proceeding", "none", ("a new attempt under the same id",))  # goosebit reuses ids
    box.put("7", "closed", "success", ("second attempt",), final=True)
    assert shape(box.pending()) == [("7", "closed", ("hash mismatch",), True),
                                    ("7", "proceeding", ("a new attempt under the same id",), False),
                                    ("7", "closed", ("second attempt",), True)]


def test_details_are_trimmed_as_they_will_be_sent(path: str) -> None:
    entry = Outbox(path).put("7", "closed", "failure", ["line"] * 30 + ["x" * 1000], final=True)
    assert len(entry.details) == 10 and entry.details[-1].endswith("more lines not sent")
    assert all(len(d) <= 256 for d in entry.details)


@pytest.mark.parametrize("args, message", [
    (("7", "finished", "success"), "execution: expected one of"),
    (("7", "closed", "ok"), "finished: expected one of"),
    (("7", "proceeding", "none", (), (-1, 100)), "progress: expected"),
])
def test_put_refuses_what_ddi_would_refuse(path: str, args: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Outbox(path).put(*args)
    assert not os.path.exists(path)


# ----------------------------------------------------------------------------- flushing


def test_flush_sends_in_order_and_empties_the_queue(path: str) -> None:
    box = Outbox(path)
    box.put("7", "closed", "success", ("ok",), final=True)
    box.put("8", "proceeding", "none", ("Downloading",))
    box.put("9", "closed", "success", ("canceled",), cancel=True, final=True)
    send = FakeSend()
    assert box.flush(send) == 3
    assert [(e.action_id, e.cancel) for e in send.sent] == [("7", False), ("8", False), ("9", True)]
    assert box.pending() == () and Outbox(path).pending() == ()


def test_gone_counts_as_delivered(path: str) -> None:
    box = Outbox(path)
    box.put("7", "closed", "success", ("ok",), final=True)
    assert box.flush(FakeSend(err(Gone, 410))) == 1
    assert Outbox(path).pending() == ()


def test_server_unavailable_stops_the_flush_and_keeps_the_rest(path: str) -> None:
    box = Outbox(path)
    box.put("7", "closed", "success", ("ok",), final=True)
    box.put("8", "closed", "failure", ("bad",), final=True)
    box.put("9", "proceeding", "none", ("Downloading",))
    send = FakeSend(None, err(ServerUnavailable, 503))
    assert box.flush(send) == 1
    assert [e.action_id for e in send.sent] == ["7", "8"]  # stopped: 9 was not tried
    assert [e.action_id for e in Outbox(path).pending()] == ["8", "9"]
    assert box.flush(FakeSend()) == 2


@pytest.mark.parametrize("error", [ConnectionResetError(104, "Connection reset by peer"),
                                   err(ServerUnavailable, None), err(AuthError, 401)])
def test_network_and_credential_errors_never_escape_flush(path: str, error: BaseException) -> None:
    box = Outbox(path)
    box.put("7", "closed", "success", ("ok",), final=True)
    box.put("8", "proceeding", "none")
    assert box.flush(FakeSend(error)) == 0
    assert len(Outbox(path).pending()) == 2


def test_not_found_drops_an_intermediate(path: str) -> None:
    box = Outbox(path)
    box.put("7", "proceeding", "none", ("Downloading",))
    box.put("8", "closed", "success", ("ok",), final=True)
    assert box.flush(FakeSend(err(NotFound, 404))) == 1
    assert Outbox(path).pending() == ()


def test_a_refused_final_is_kept_while_other_actions_go_ahead(path: str) -> None:
    box = Outbox(path)
    box.put("7", "closed", "failure", ("bad",), final=True)
    box.put("7", "proceeding", "none", ("new attempt",))  # must not overtake the final of 7
    box.put("8", "closed", "success", ("ok",), final=True)
    send = FakeSend(err(NotFound, 404), None)
    assert box.flush(send) == 1
    assert [e.action_id for e in send.sent] == ["7", "8"]
    assert shape(Outbox(path).pending()) == [("7", "closed", ("bad",), True),
                                             ("7", "proceeding", ("new attempt",), False)]


def test_conflict_keeps_the_entry_for_the_next_flush(path: str) -> None:
    box = Outbox(path)
    box.put("7", "closed", "success", ("ok",), final=True)
    assert box.flush(FakeSend(err(Conflict, 409))) == 0
    assert box.flush(FakeSend()) == 1


def test_405_drops_cancel_feedback_the_server_does_not_want(path: str) -> None:
    box = Outbox(path)
    box.put("7", "closed", "success", ("canceled",), cancel=True, final=True)
    assert box.flush(FakeSend(err(Rejected, 405))) == 0
    assert box.pending() == ()


def test_quota_drops_intermediates_and_the_later_progress_of_that_action(path: str) -> None:
    box = Outbox(path)
    box.put("7", "proceeding", "none", ("Downloaded 50%",))
    assert box.flush(FakeSend(err(QuotaExceeded, 429))) == 0
    assert box.pending() == ()
    box.put("7", "proceeding", "none", ("Downloaded 60%",))
    box.put("8", "proceeding", "none", ("another action still reports",))
    send = FakeSend()
    assert box.flush(send) == 1
    assert [e.action_id for e in send.sent] == ["8"]


def test_quota_on_a_final_resends_it_with_one_line_of_details(path: str) -> None:
    box = Outbox(path)
    box.put("7", "closed", "failure", ("install failed: image rootfs", "line 2", "line 3"), final=True)
    send = FakeSend(err(QuotaExceeded, 429), None)
    assert box.flush(send) == 1
    assert send.summary == [("7", "closed", ("install failed: image rootfs", "line 2", "line 3")),
                            ("7", "closed", ("install failed: image rootfs",))]
    assert box.pending() == ()


def test_a_trimmed_final_that_meets_an_outage_stays_trimmed_across_restarts(path: str) -> None:
    box = Outbox(path)
    box.put("7", "closed", "failure", ("first", "second"), final=True)
    assert box.flush(FakeSend(err(QuotaExceeded, 429), err(ServerUnavailable, 502))) == 0
    (kept,) = Outbox(path).pending()
    assert kept.details == ("first",) and kept.final
    send = FakeSend(err(QuotaExceeded, 429))
    assert Outbox(path).flush(send) == 0  # still over quota with one line: kept, never dropped
    assert len(Outbox(path).pending()) == 1


def test_a_put_while_its_entry_is_being_sent_keeps_the_newer_one(path: str) -> None:
    box = Outbox(path)
    box.put("7", "proceeding", "none", ("Downloaded 10%",))

    def send(entry: PendingFeedback) -> None:
        box.put("7", "proceeding", "none", ("Downloaded 20%",))  # the download thread goes on

    assert box.flush(send) == 1
    assert shape(box.pending()) == [("7", "proceeding", ("Downloaded 20%",), False)]


# ----------------------------------------------------------------------------- the file


@pytest.mark.parametrize("content", [
    b"{not json",
    b"\xff\xfe",
    b"[]",
    b'{"format": 2, "next_seq": 1, "entries": []}',
    b'{"format": 1, "next_seq": 1, "entries": [{"seq": 1}]}',
    b'{"format": 1, "next_seq": "1", "entries": []}',
])
def test_a_corrupt_file_is_a_state_error_naming_it_and_is_kept(path: str, content: bytes) -> None:
    Path(path).write_bytes(content)
    with pytest.raises(StateCorrupt, match="`otad state reset` sets it aside and the queue starts empty") as info:
        Outbox(path)
    assert info.value.where == path
    assert Path(path).read_bytes() == content


def test_an_entry_with_a_wrong_type_is_refused(path: str) -> None:
    box = Outbox(path)
    box.put("7", "closed", "success", ("ok",), final=True)
    body = json.loads(Path(path).read_text())
    body["entries"][0]["final"] = "yes"
    Path(path).write_text(json.dumps(body))
    with pytest.raises(StateError, match=r"entries\[0\]: a field has the wrong type"):
        Outbox(path)


def test_a_power_cut_while_writing_leaves_the_old_queue(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    box = Outbox(path)
    first = box.put("7", "closed", "success", ("ok",), final=True)
    before = Path(path).read_bytes()

    def cut(src: str, dst: str) -> None:
        raise OSError(5, "Input/output error")  # the temp file is written, the rename never happens

    monkeypatch.setattr(os, "replace", cut)  # the one otad.durable.atomic_write calls
    with pytest.raises(StateError, match="cannot write the feedback queue: Input/output error"):
        box.put("8", "closed", "failure", ("bad",), final=True)
    monkeypatch.undo()
    assert Path(path).read_bytes() == before
    assert box.pending() == (first,) and Outbox(path).pending() == (first,)
    assert sorted(os.listdir(os.path.dirname(path))) == ["outbox.json"]  # no temp file left behind
