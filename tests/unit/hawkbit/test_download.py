"""ResumableDownload against DdiFake and FaultProxy: drops, stalls, short bodies, restarts, hashes, memory."""

from __future__ import annotations

import hashlib
import os
import random
import tracemalloc
from typing import Any, Callable, Iterator, List, Optional, Tuple

import pytest

from otad.errors import Cancelled, DownloadInterrupted, HashMismatch, RestartRequired, SizeMismatch
from otad.hawkbit.ddi import Artifact, AuthError, DdiClient, Gone, HawkbitSettings, NotFound
from otad.hawkbit.download import ResumableDownload
from otad.retry import Backoff, ResumePolicy
from tests.hawkbit_fakes import ConnPlan, DdiFake, FaultProxy

DATA = os.urandom(3 << 20)  # 3 MiB: several 1 MiB chunks


@pytest.fixture
def fake() -> Iterator[DdiFake]:
    with DdiFake() as f:
        yield f
    assert not f.server_errors, f.server_errors[0]


@pytest.fixture
def client(fake: DdiFake) -> Iterator[DdiClient]:
    with DdiClient(HawkbitSettings(url=fake.url, controller_id=fake.controller_id, read_timeout_s=0.5)) as c:
        yield c


def offered(fake: DdiFake, client: DdiClient, data: bytes = DATA, **kw: Any) -> Artifact:
    fake.offer("8", data, **kw)
    link = client.poll().deployment
    assert link is not None
    return client.deployment(link).swu_artifact()


class Sleeps(List[float]):
    """Stands in for time.sleep: records the waits instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def download(client: DdiClient, art: Artifact, read_size: int = 65536, **kw: Any) -> Tuple[bytes, ResumableDownload]:
    kw.setdefault("sleep", Sleeps())
    kw.setdefault("rng", random.Random(1))
    dl = ResumableDownload(client, art, **kw)
    parts = []
    while True:
        part = dl.read(read_size)
        if not part:
            break
        parts.append(part)
    return b"".join(parts), dl


def artifact_requests(fake: DdiFake) -> List[Optional[str]]:
    """The Range header of each artifact request (None: a plain GET)."""
    return [r.headers.get("Range") for r in fake.requests if r.endpoint == "artifact"]


# --- the happy path ------------------------------------------------------------------------------

def test_a_clean_download_is_one_plain_get_and_verified(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    progress: List[Tuple[int, Optional[int]]] = []
    data, dl = download(client, art, on_progress=lambda pos, total: progress.append((pos, total)))
    assert data == DATA and dl.verified and dl.position == len(DATA)
    assert artifact_requests(fake) == [None]
    assert progress[-1] == (len(DATA), len(DATA))
    assert [p for p, _ in progress] == sorted(p for p, _ in progress)
    assert dl.read(10) == b"" and dl.read(-1) == b""


def test_read_returns_exactly_n_bytes_across_chunks(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    dl = ResumableDownload(client, art)
    assert len(dl.read(3)) == 3 and len(dl.read(1_500_000)) == 1_500_000
    assert dl.position == 1_500_003
    assert dl.read(-1) == DATA[1_500_003:]


@pytest.mark.parametrize("hashes", [("sha1",), ("md5",), ("sha256", "sha1")])
def test_the_strongest_announced_hash_is_checked(fake: DdiFake, client: DdiClient, hashes: Tuple[str, ...]) -> None:
    art = offered(fake, client, hashes=hashes)
    data, dl = download(client, art)
    assert data == DATA and dl.verified == (hashes != ())


# --- resuming ------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", range(6))
def test_drops_at_random_offsets_are_resumed_seamlessly(fake: DdiFake, client: DdiClient, seed: int) -> None:
    art = offered(fake, client)
    rng = random.Random(seed)
    drops = sorted(rng.sample(range(1, len(DATA)), rng.randint(1, 5)))  # absolute offsets
    for start, end in zip([0] + drops, drops):
        fake.fault("artifact", drop_after=end - start)
    data, dl = download(client, art, read_size=rng.choice([13, 4096, 65536, 1 << 20]) if seed else 7)
    assert data == DATA and dl.verified
    assert artifact_requests(fake) == [None] + [f"bytes={d}-" for d in drops]
    etag = fake.actions["8"].artifacts[0].etag
    assert all(r.headers.get("If-Range") == etag for r in fake.requests if r.headers.get("Range"))


def test_the_resume_offsets_are_exactly_the_bytes_received(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.fault("artifact", drop_after=100_000)
    fake.fault("artifact", drop_after=250_000)
    data, _ = download(client, art)
    assert data == DATA
    assert artifact_requests(fake) == [None, "bytes=100000-", "bytes=350000-"]


def test_a_stall_hits_the_read_timeout_and_is_resumed(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.fault("artifact", stall_s=5, stall_after=200_000)
    data, dl = download(client, art)
    assert data == DATA and dl.verified
    first, resume = artifact_requests(fake)
    # urllib3 2 (read1) loses nothing; 1.26's read(64 KiB) may drop the piece that timed out.
    assert first is None and resume is not None
    assert 200_000 - 65536 < int(resume[len("bytes="):-1]) <= 200_000


def test_a_body_that_ends_cleanly_but_short_is_detected_and_resumed(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.fault("artifact", chunked=True, drop_after=1_234_567)  # chunked, proper end: no error at all
    data, _ = download(client, art)
    assert data == DATA
    assert artifact_requests(fake) == [None, "bytes=1234567-"]


def test_a_wrong_short_content_length_is_detected_and_resumed(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.fault("artifact", content_length=777_777)
    data, _ = download(client, art)
    assert data == DATA
    assert artifact_requests(fake) == [None, "bytes=777777-"]


def test_a_slow_link_is_no_failure(fake: DdiFake, client: DdiClient) -> None:
    small = os.urandom(30_000)
    art = offered(fake, client, small)
    fake.fault("artifact", rate_bps=100_000)
    data, dl = download(client, art)
    assert data == small and dl.verified and artifact_requests(fake) == [None]


def test_5xx_while_reopening_backs_off_honouring_retry_after(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.fault("artifact", drop_after=500_000)
    fake.fault("artifact", status=503, headers={"Retry-After": "30"})
    fake.fault("artifact", status=500)
    sleeps = Sleeps()
    data, _ = download(client, art, sleep=sleeps)
    assert data == DATA
    assert len(sleeps) == 3 and sleeps[1] >= 30
    assert artifact_requests(fake) == [None, "bytes=500000-", "bytes=500000-", "bytes=500000-"]


def test_through_a_fault_proxy_two_dropped_connections_still_give_the_exact_bytes(fake: DdiFake,
                                                                                 client: DdiClient) -> None:
    art = offered(fake, client)
    with FaultProxy(fake.url, [ConnPlan(drop_after=400_000), ConnPlan(drop_after=1_000_000)]) as proxy:
        via = Artifact(**{**art.__dict__, "download_url": proxy.rewrite(art.download_url)})
        data, dl = download(client, via)
    assert data == DATA and dl.verified
    assert proxy.connections == 3
    assert len(artifact_requests(fake)) == 3


def test_starting_at_an_offset_continues_the_callers_hash(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    prefix = hashlib.sha256(DATA[:1_000_000])
    etag = fake.actions["8"].artifacts[0].etag
    data, dl = download(client, art, start_offset=1_000_000, prefix_hash=prefix, if_range=etag)
    assert data == DATA[1_000_000:] and dl.verified and dl.position == len(DATA)
    assert fake.requests[-1].headers["If-Range"] == etag
    assert prefix.hexdigest() == hashlib.sha256(DATA).hexdigest()


def test_a_stale_etag_after_reboot_requires_a_restart(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    with pytest.raises(RestartRequired, match="cannot resume at byte 1000"):
        download(client, art, start_offset=1000, if_range='"from-before-the-reboot"')


def test_starting_at_an_offset_without_a_hash_does_not_verify(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    data, dl = download(client, art, start_offset=3)
    assert data == DATA[3:] and not dl.verified
    assert artifact_requests(fake) == ["bytes=3-"]


def test_a_prefix_hash_of_an_unannounced_algorithm_is_refused(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client, hashes=("sha1",))
    with pytest.raises(ValueError, match="announces no sha256"):
        ResumableDownload(client, art, start_offset=5, prefix_hash=hashlib.sha256(DATA[:5]))


def test_416_at_the_full_length_means_complete(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    data, dl = download(client, art, start_offset=len(DATA), prefix_hash=hashlib.sha256(DATA))
    assert data == b"" and dl.verified
    assert artifact_requests(fake) == [f"bytes={len(DATA)}-"]


# --- giving up ---------------------------------------------------------------------------------

def test_200_to_a_ranged_request_requires_a_restart(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.fault("artifact", drop_after=300_000)
    fake.fault("artifact", ignore_range=True)
    dl = ResumableDownload(client, art, sleep=Sleeps())
    assert len(dl.read(200_000)) == 200_000
    with pytest.raises(RestartRequired, match="cannot resume at byte 300000") as err:
        dl.read(200_000)
    assert err.value.position == 300_000 and err.value.url == art.download_url


def test_a_changed_file_on_the_server_requires_a_restart(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.fault("artifact", drop_after=300_000)
    dl = ResumableDownload(client, art, sleep=Sleeps())
    dl.read(100_000)
    fake.actions["8"].artifacts[0].data = bytes(len(DATA))  # new ETag: If-Range is stale -> 200
    with pytest.raises(RestartRequired):
        dl.read(-1)


def test_416_short_of_the_length_requires_a_restart(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.fault("artifact", status=416, headers={"Content-Range": "bytes */10"})
    with pytest.raises(RestartRequired, match="its size: 10"):
        download(client, art, start_offset=100)


def test_a_hash_mismatch_withholds_the_last_chunk(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.actions["8"].artifacts[0].data = DATA[:-1] + bytes([DATA[-1] ^ 1])
    dl = ResumableDownload(client, art, sleep=Sleeps())
    got = bytearray()
    with pytest.raises(HashMismatch, match=f"sha256 of the {len(DATA)} bytes is .*, expected {art.sha256}"):
        while True:
            part = dl.read(65536)
            if not part:
                break
            got += part
    assert len(got) < len(DATA) and not dl.verified
    with pytest.raises(HashMismatch):
        dl.read(1)  # and it stays failed


def test_verify_reads_what_the_consumer_left_and_checks_it(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    dl = ResumableDownload(client, art)
    dl.read(1000)
    dl.verify()
    assert dl.verified and dl.position == len(DATA)


def test_more_bytes_than_announced_is_a_size_mismatch(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.actions["8"].artifacts[0].data = DATA + b"extra"
    with pytest.raises(SizeMismatch, match=f"server has {len(DATA) + 5} bytes, the deployment announced"):
        download(client, art)


def test_a_range_total_other_than_announced_is_a_size_mismatch(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.fault("artifact", status=206, body=b"x", headers={"Content-Range": f"bytes 5-5/{len(DATA) + 1}"})
    with pytest.raises(SizeMismatch):
        download(client, art, start_offset=5)


@pytest.mark.parametrize("status, error", [(404, NotFound), (410, Gone), (401, AuthError)])
def test_404_410_and_401_fail_at_once_without_retrying(fake: DdiFake, client: DdiClient, status: int,
                                                       error: type) -> None:
    art = offered(fake, client)
    fake.fault("artifact", drop_after=100_000)
    fake.fault("artifact", status=status, times=None)
    sleeps = Sleeps()
    with pytest.raises(error):
        download(client, art, sleep=sleeps)
    assert len(artifact_requests(fake)) == 2 and len(sleeps) == 1


def test_attempts_without_progress_are_bounded(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.fault("artifact", drop_after=100_000)
    fake.fault("artifact", status=503, times=None)
    sleeps = Sleeps()
    policy = ResumePolicy(max_attempts=4, backoff=Backoff(base_s=1, cap_s=8))
    with pytest.raises(DownloadInterrupted, match="gave up at byte 100000 of") as err:
        download(client, art, sleep=sleeps, policy=policy)
    assert err.value.position == 100_000
    assert len(sleeps) == 4 and all(s <= 8 for s in sleeps)  # 4 retries, the first one after the drop
    assert len(artifact_requests(fake)) == 5


def test_time_without_progress_is_bounded(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.fault("artifact", status=503, times=None)
    now = [0.0]

    def sleep(s: float) -> None:
        now[0] += s

    policy = ResumePolicy(max_attempts=1000, max_stall_s=100, backoff=Backoff(base_s=10, cap_s=30, jitter="none"))
    with pytest.raises(DownloadInterrupted, match="100 s without progress"):
        download(client, art, sleep=sleep, monotonic=lambda: now[0], policy=policy)
    assert now[0] == 100  # the last wait is cut to the budget


def test_reconnections_are_bounded_even_with_progress(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    fake.fault("artifact", drop_after=1000, times=None)  # progress, but only 1000 bytes a connection
    with pytest.raises(DownloadInterrupted, match="20 connections"):
        download(client, art, policy=ResumePolicy(max_attempts=10, max_reopens=20))
    assert len(artifact_requests(fake)) == 20


def test_should_stop_cancels_before_the_next_chunk(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    stop = [False]
    dl = ResumableDownload(client, art, should_stop=lambda: stop[0])
    dl.read(100)
    stop[0] = True
    with pytest.raises(Cancelled, match="download cancelled") as err:
        dl.read(len(DATA))
    assert 100 <= err.value.position < len(DATA)


# --- memory -------------------------------------------------------------------------------------

def test_memory_stays_bounded_by_the_chunk_size(fake: DdiFake, client: DdiClient) -> None:
    big = os.urandom(24 << 20)
    art = offered(fake, client, big, hashes=("sha256",))
    fake.fault("artifact", drop_after=10 << 20)
    digest = hashlib.sha256()
    dl = ResumableDownload(client, art, sleep=Sleeps())
    tracemalloc.start()
    try:
        while True:
            part = dl.read(65536)
            if not part:
                break
            digest.update(part)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert digest.hexdigest() == hashlib.sha256(big).hexdigest() and dl.verified
    assert peak < 2 << 20, f"peak {peak} bytes"  # measured: ~1.3 MB (one 1 MiB chunk + read1's buffer)


@pytest.mark.parametrize("hashes", [("sha256",), ("sha1",)])
def test_a_snapshot_holds_the_servers_hash_over_exactly_the_bytes_delivered(fake: DdiFake, client: DdiClient,
                                                                            hashes: Tuple[str, ...]) -> None:
    from otad.hashstate import ResumableHash

    art = offered(fake, client, hashes=hashes)
    dl = ResumableDownload(client, art, sleep=Sleeps(), rng=random.Random(1), chunk_bytes=50_000)
    sizes = random.Random(3)
    got = b""
    snapshots = []
    while True:
        part = dl.read(sizes.randint(1, 120_000))
        if not part:
            break
        got += part
        snapshot = dl.snapshot()
        assert snapshot is not None
        snapshots.append(snapshot)
    assert got == DATA and len(snapshots) > 10
    name = hashes[0]
    for position, at in snapshots:
        assert position <= len(DATA) and at.hexdigest() == hashlib.new(name, DATA[:position]).hexdigest()
    # a snapshot taken mid-way goes on to the announced hash in a new download from its offset
    position, at = snapshots[len(snapshots) // 2]
    resumed = ResumableHash(at.name, at.state(), position)
    data, dl2 = download(client, art, start_offset=position, prefix_hash=resumed)
    assert data == DATA[position:] and dl2.verified


def test_no_snapshot_when_only_md5_is_announced(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client, hashes=("md5",))
    dl = ResumableDownload(client, art, sleep=Sleeps(), rng=random.Random(1))
    dl.read(1000)
    assert dl.snapshot() is None


# --- asking for the head first ------------------------------------------------------------------

def test_the_head_comes_first_then_the_rest_in_one_request_once_the_reader_says_so(fake: DdiFake,
                                                                                 client: DdiClient) -> None:
    art = offered(fake, client)
    dl = ResumableDownload(client, art, head_bytes=16 << 10, sleep=Sleeps())
    head = dl.read(16 << 10)
    dl.upto(None)  # a plain bundle: read to its end
    rest = b"".join(iter(lambda: dl.read(1 << 20), b""))
    assert head + rest == DATA and dl.verified
    assert artifact_requests(fake) == ["bytes=0-16383", "bytes=16384-"]


def test_the_reader_bounds_what_is_asked_for_and_a_longer_read_asks_for_more(fake: DdiFake, client: DdiClient) -> None:
    art = offered(fake, client)
    dl = ResumableDownload(client, art, head_bytes=16 << 10, sleep=Sleeps())
    assert dl.read(20_000) == DATA[:20_000]  # past the head, nothing said: 4 times as much asked for
    dl.upto(100_000)  # the reader will stop before byte 100000 (a delta's chunk data follows)
    assert dl.read(70_000) == DATA[20_000:90_000]
    dl.close()
    assert artifact_requests(fake) == ["bytes=0-16383", "bytes=16384-81919", "bytes=81920-99999"]
    served = sum(int(r.split("-")[1]) + 1 - int(r[6:].split("-")[0]) for r in artifact_requests(fake) if r)
    assert served == 100_000  # not a byte past what the reader said
