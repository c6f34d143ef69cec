"""One deployment's run: the download into the inactive slot, the install, the arming decision.

Owns what happens to one hawkBit action under the writer lock, from DOWNLOADING to the armed
trial: the download (resumed from the journal where it can be), its progress feedback and
their throttle, the root polls that notice a cancel meanwhile, and whether the written slot is
armed now, kept for the maintenance window or left download-only. The poll loop, cancel
requests and what the last boot left are the agent's (hawkbit/agent.py).
"""

from __future__ import annotations

import logging
import random
from functools import partial
from typing import Callable, Dict, Optional, Protocol, Tuple

from otad import crashpoint, update
from otad.config import Config
from otad.errors import (AuthError, Cancelled, Forbidden, OtadError, RestartRequired, ResumeError, ServerError,
                         ServerUnavailable)
from otad.delta.fetch import Opener
from otad.hawkbit.actions import ActionLog, WaitingAction
from otad.hawkbit.ddi import ActionLink, Artifact, DdiClient, Deployment
from otad.hawkbit.download import ResumableDownload
from otad.hawkbit.journal import DownloadCheckpoint, DownloadJournal
from otad.hawkbit.outbox import Outbox, PendingFeedback
from otad.hawkbit.publish import DaemonPhase, StatusPublisher
from otad.httpget import PlainOpener
from otad.install.chunks import RemoteFile
from otad.install.installer import Resuming
from otad.install.resume import ResumePoint
from otad.lock import HeldLock
from otad.notify import notify
from otad.progress import Progress, ProgressListener
from otad.retry import ResumePolicy
from otad.state import Phase, State, StateStore
from otad.update import SlotInstallResult

log = logging.getLogger(__name__)

PROGRESS_BUDGET = 15  # progress feedbacks per action and run (hawkBit keeps <= 1000 per action)
# The first request of a download asks for this much: sw-description and its signature. Whether
# the rest is read to the end (or only up to a delta's chunk data) is the installer's to say.
HEAD_BYTES = 16 << 10


class DeploymentChunks:
    """Where a deployment's delta images get their chunks (install/chunks.py): another artifact of
    the .swu's chunk (SWUpdate's `zckfile`, L2), or the .swu's own link (its last member, L3), both
    through the DDI client's session, auth and TLS; a static URL without the hawkBit credentials."""

    def __init__(self, client: DdiClient, deployment: Deployment, download: ResumableDownload) -> None:
        self.client = client
        self.deployment = deployment
        self.download = download
        self._static: Optional[PlainOpener] = None
        self.left_stream = False

    def static(self, url: str) -> Optional[Opener]:
        if self._static is None:
            settings = self.client.settings
            self._static = PlainOpener(ca_file=settings.ca_file, timeout_s=settings.read_timeout_s)
        return self._static

    def artifact(self, name: str) -> Optional[RemoteFile]:
        found = self.deployment.artifact(name)
        return None if found is None else RemoteFile(found.download_url, found.size, self.client.open_url)

    def bundle(self) -> Optional[RemoteFile]:
        swu = self.download.artifact
        return RemoteFile(swu.download_url, swu.size, self.client.open_url, etag=self.download.etag)

    def leave_stream(self) -> None:
        self.left_stream = True
        self.download.close()  # bytes the server would go on sending are not wanted

    def upto(self, end: Optional[int]) -> None:
        self.download.upto(end)


class Daemon(Protocol):
    """What a deployment's run uses of the daemon that starts it (agent.Agent): its config,
    server, state and status files, and how it reports, sleeps and reboots."""

    cfg: Config
    client: DdiClient
    store: StateStore
    actions: ActionLog
    outbox: Outbox
    status: StatusPublisher
    pet: ProgressListener  # the watchdog, fed from the install's progress
    waiting_href: Optional[str]  # the deploymentBase href last found "not now"
    progress_sent: Dict[str, int]  # progress feedbacks sent per action in this process

    @property
    def writer(self) -> HeldLock: ...

    def feedback(self, action: str, execution: str, detail: str,
                 progress: Optional[Tuple[int, Optional[int]]] = None) -> None: ...

    def send(self, item: PendingFeedback) -> None: ...

    def wait(self, seconds: float) -> None: ...

    def report_final(self, state: State) -> None: ...

    def reboot(self, why: str) -> None: ...


class DeploymentRun:
    """One deployment, under the writer lock: `install()` downloads it into the inactive slot and
    arms it when allowed; `arm_when_allowed()` takes up a slot written earlier. A cancel seen
    while downloading raises Cancelled, with the server's request in `cancel_link`."""

    def __init__(self, daemon: Daemon, deployment: Deployment, link: ActionLink, *, poll_every_s: float,
                 rng: random.Random, clock: Callable[[], float]) -> None:
        self.daemon = daemon
        self.cfg = daemon.cfg
        self.deployment = deployment
        self.link = link
        self.action = deployment.action_id
        self.poll_every_s = poll_every_s  # the server's pace: how often the root is read for a cancel
        self.rng = rng
        self.clock = clock
        self.cancel_link: Optional[ActionLink] = None  # a cancel seen while downloading
        self.throttle = _FeedbackThrottle(self.cfg.hawkbit.feedback_interval_s, clock)
        self.delta_throttle = _FeedbackThrottle(self.cfg.hawkbit.feedback_interval_s, clock)
        self.last_check = clock()  # when the root was last read for a cancel

    # ------------------------------------------------------------------ download and install

    def install(self) -> None:
        action, deployment, daemon = self.action, self.deployment, self.daemon
        try:
            artifact = deployment.swu_artifact()
        except OtadError as exc:
            self.fail(str(exc))
            return
        version = next((c.version for c in deployment.chunks if artifact in c.artifacts), "")
        running = update.running_version(self.cfg)
        if version and version == running:
            daemon.outbox.put(action, "closed", "success", (f"version {version} is already installed and running",),
                              final=True)
            daemon.actions.end(action, "success")
            return
        daemon.store.transition(Phase.DOWNLOADING, action_id=action, version=version or None)
        crashpoint.reached("agent.downloading_persisted")
        daemon.status.publish(phase=DaemonPhase.DOWNLOADING, action_id=action, version=version or None, bytes_done=0,
                              bytes_total=artifact.size, last_error=None)
        daemon.feedback(action, "proceeding", f"Downloading {artifact.filename} ({artifact.size} bytes) "
                                              f"into the inactive slot")
        try:
            done = self.stream_and_install(artifact)
        except Cancelled:
            daemon.store.transition(Phase.IDLE)
            raise  # the agent answers the cancel
        except (ServerUnavailable, AuthError, Forbidden):
            daemon.store.transition(Phase.IDLE)
            raise  # the network or the credentials, not the bundle: a later poll starts again
        except OtadError as exc:
            daemon.store.transition(Phase.IDLE)
            self.fail(f"install failed: {exc}")
            return
        crashpoint.reached("agent.installed")
        assert done.target is not None  # the agent runs only with slots
        waiting = WaitingAction(action, done.install.manifest.version, done.target.name,
                                {v.name: (v.value or None) for v in done.install.bootenv})
        daemon.actions.wait(waiting)
        daemon.store.transition(Phase.DOWNLOADED)
        self.arm_when_allowed(waiting)

    def stream_and_install(self, artifact: Artifact) -> SlotInstallResult:
        """Download straight into the inactive slot; the server's hash is checked before this returns.

        Goes on from the journal's resume point when it is this artifact's; a server that cannot
        continue there or a slot changed since means one more try from the first byte. The
        journal survives network failures (the next attempt resumes) and ends with the action.
        """
        journal = DownloadJournal(self.cfg.system.state_dir)
        saved = journal.load()
        if saved is not None and not saved.matches(self.action, artifact):
            journal.clear()
            saved = None
        try:
            try:
                done = self.download_into_slot(artifact, journal, saved)
            except (RestartRequired, ResumeError) as exc:
                if saved is None:
                    raise
                log.warning("action %s: cannot resume at byte %d (%s); downloading again from the beginning",
                            self.action, saved.point.offset, exc)
                journal.clear()
                done = self.download_into_slot(artifact, journal, None)
        except (ServerUnavailable, AuthError, Forbidden):
            raise  # the journal stays: the next attempt goes on from its point
        except OtadError:
            journal.clear()
            raise
        journal.clear()
        return done

    def download_into_slot(self, artifact: Artifact, journal: DownloadJournal,
                           saved: Optional[DownloadCheckpoint]) -> SlotInstallResult:
        """One attempt: from `saved`'s point (or the first byte) through update.install."""
        self.throttle = _FeedbackThrottle(self.cfg.hawkbit.feedback_interval_s, self.clock)
        self.delta_throttle = _FeedbackThrottle(self.cfg.hawkbit.feedback_interval_s, self.clock)
        self.last_check = self.clock()
        self.cancel_link = None
        if saved is not None:
            log.info("action %s: resuming the download of %s at byte %d of %d", self.action, artifact.filename,
                     saved.point.offset, artifact.size)
        with self.open_download(artifact, saved) as download:
            resuming = Resuming(saved.point if saved else None, partial(self.save_checkpoint, download, journal),
                                self.cfg.hawkbit.resume_checkpoint_mib << 20)
            done = update.install(self.cfg, download, name=f"action {self.action}: {artifact.filename}",
                                  writer=self.daemon.writer, total_bytes=artifact.size, progress=self.on_install,
                                  no_switch=True, action_id=self.action, resuming=resuming,
                                  chunks=DeploymentChunks(self.daemon.client, self.deployment, download))
            self.verify(download, done)
        for delta in done.install.deltas:
            self.daemon.feedback(self.action, "proceeding", f"{delta.name}: {delta.summary()}")
        return done

    def open_download(self, artifact: Artifact, saved: Optional[DownloadCheckpoint]) -> ResumableDownload:
        return ResumableDownload(self.daemon.client, artifact, start_offset=saved.point.offset if saved else 0,
                                 prefix_hash=saved.prefix_hash() if saved else None,
                                 if_range=saved.etag if saved else None,
                                 policy=ResumePolicy(max_attempts=self.cfg.hawkbit.max_download_attempts),
                                 on_progress=self.on_bytes, should_stop=self.cancel_requested, rng=self.rng,
                                 sleep=self.daemon.wait, monotonic=self.clock, head_bytes=HEAD_BYTES)

    def on_bytes(self, done: int, total: Optional[int]) -> None:
        daemon, action = self.daemon, self.action
        daemon.status.publish(phase=DaemonPhase.DOWNLOADING, bytes_done=done, bytes_total=total)
        if self.throttle.due(done, total) and daemon.progress_sent.get(action, 0) < PROGRESS_BUDGET:
            daemon.progress_sent[action] = daemon.progress_sent.get(action, 0) + 1
            percent = done * 100 // total if total else 0
            daemon.feedback(action, "proceeding", f"Downloaded {percent}%", progress=(percent, 100))

    def cancel_requested(self) -> bool:
        # Keep polling the root at the server's pace during a download, to notice a cancel.
        if self.clock() - self.last_check < self.poll_every_s:
            return False
        self.last_check = self.clock()
        try:
            root = self.daemon.client.poll()
        except ServerError:
            return False
        if root.cancel is not None and root.cancel.id == self.action:
            self.cancel_link = root.cancel
            return True
        return False

    def on_install(self, event: Progress) -> None:
        self.daemon.pet(event)
        notify("WATCHDOG=1")
        if event.phase == "delta":
            self.on_delta(event)

    def on_delta(self, event: Progress) -> None:
        """A delta image's progress, in planned bytes (reused and fetched), as the download's would be."""
        daemon, action, total = self.daemon, self.action, event.total_bytes
        daemon.status.publish(phase=DaemonPhase.DOWNLOADING, bytes_done=event.done_bytes, bytes_total=total)
        if self.delta_throttle.due(event.done_bytes, total) and daemon.progress_sent.get(action, 0) < PROGRESS_BUDGET:
            daemon.progress_sent[action] = daemon.progress_sent.get(action, 0) + 1
            percent = event.done_bytes * 100 // total if total else 0
            daemon.feedback(action, "proceeding", f"Delta image {event.item}: {percent}% of its planned bytes "
                                                  "(reused and fetched)", progress=(percent, 100))

    def save_checkpoint(self, download: ResumableDownload, journal: DownloadJournal, point: ResumePoint) -> None:
        snapshot = download.snapshot()
        if snapshot is None or snapshot[0] != point.offset:
            return  # the server's hash is one whose state cannot be saved (md5)
        at, artifact = snapshot[1], download.artifact
        journal.save(DownloadCheckpoint(self.action, artifact.filename, artifact.size, artifact.sha256,
                                        download.etag, at.name if at else None, at.state() if at else None, point))
        crashpoint.reached("agent.download_checkpoint")

    def verify(self, download: ResumableDownload, done: SlotInstallResult) -> None:
        """What follows the CPIO trailer, and the server's hash; a mismatch fails the written slot.
        A bundle whose last member is a delta's chunk data was not read to its end: its hash cannot
        be checked, and need not be (every chunk was checked against the signed zchunk header)."""
        if not done.install.read_to_end:
            download.close()
            log.info("action %s: %s was read up to its delta chunk data; its %s is not checked, every chunk "
                     "written was checked against the signed zchunk header", self.action, download.artifact.filename,
                     (download.artifact.strongest_hash() or ("hash", ""))[0])
            return
        try:
            download.verify()
        except OtadError:
            update.mark_failed(self.cfg, done.install, "the download did not match the server's hash")
            raise

    # ------------------------------------------------------------------ arming

    def arm_when_allowed(self, waiting: WaitingAction) -> None:
        """Arm now, or keep the written slot: download-only, or the maintenance window is closed."""
        action, deployment, daemon = waiting.action_id, self.deployment, self.daemon
        if deployment.update == "skip" and deployment.maintenance_window is None:
            # download-only: `downloaded` closes the action in hawkBit; the slot is never armed for it
            daemon.outbox.put(action, "downloaded", "none", (f"version {waiting.version} downloaded into slot "
                                                             f"{waiting.target_slot}; download only, not installed",),
                              final=True)
            daemon.actions.end(action, "downloaded")
            daemon.store.transition(Phase.IDLE)
            daemon.outbox.flush(daemon.send)
            return
        if deployment.update == "skip" or deployment.maintenance_window == "unavailable":
            if daemon.waiting_href is None:
                daemon.feedback(action, "downloaded", f"version {waiting.version} written into slot "
                                f"{waiting.target_slot}; waiting for the maintenance window")
            daemon.waiting_href = self.link.href
            log.info("action %s: waiting for the maintenance window", action)
            daemon.status.publish(phase=DaemonPhase.WAITING_WINDOW, action_id=action, version=waiting.version)
            return
        daemon.waiting_href = None
        self.arm_and_reboot(waiting)

    def arm_and_reboot(self, waiting: WaitingAction) -> None:
        action, target, daemon = waiting.action_id, waiting.target_slot, self.daemon
        if daemon.store.load().phase is Phase.DOWNLOADED:
            daemon.store.transition(Phase.INSTALLED)
        try:
            update.arm(self.cfg, target, waiting.version, waiting.bootenv, writer=daemon.writer, action_id=action)
        except OtadError as exc:
            self.arm_failed(target, exc)
            return
        crashpoint.reached("agent.armed")
        daemon.actions.clear_waiting()
        daemon.feedback(action, "proceeding", f"version {waiting.version} installed into slot {target}; "
                                              "rebooting to try it")
        daemon.reboot(f"trial boot of slot {target}")

    def arm_failed(self, target: str, exc: OtadError) -> None:
        action, daemon = self.action, self.daemon
        log.error("action %s: arming slot %s failed: %s", action, target, exc)
        state = daemon.store.load()
        if state.phase is Phase.ARMING:
            # The env write may have landed: let confirm's rules decide, as after a power cut.
            try:
                update.confirm_boot(self.cfg, writer=daemon.writer)
            except OtadError as again:
                log.error("action %s: the interrupted arming stays for the next start: %s", action, again)
                return
            state = daemon.store.load()
        if state.phase is Phase.FINAL_PENDING:
            daemon.report_final(state)
        elif state.phase is Phase.TRIAL_ARMED:
            daemon.actions.clear_waiting()
            daemon.reboot(f"trial boot of slot {target}")
        elif not state.trial:
            if state.phase is not Phase.IDLE:
                daemon.store.transition(Phase.IDLE)
            self.fail(f"could not arm slot {target}: {exc}")

    def fail(self, reason: str) -> None:
        action, daemon = self.action, self.daemon
        log.error("action %s failed: %s", action, reason)
        daemon.outbox.put(action, "closed", "failure", (reason,), final=True)
        daemon.actions.end(action, "failure")
        daemon.status.publish(phase=DaemonPhase.ERROR, last_error=reason, action_id=action)
        daemon.outbox.flush(daemon.send)


class _FeedbackThrottle:
    """At most one progress feedback per `interval_s` and per 10 % step; 100 % always."""

    def __init__(self, interval_s: float, clock: Callable[[], float]) -> None:
        self.interval_s = interval_s
        self.clock = clock
        self.last_at = float("-inf")
        self.last_decile = -1

    def due(self, done: int, total: Optional[int]) -> bool:
        decile = done * 10 // total if total else 0
        now = self.clock()
        if decile > self.last_decile and (now - self.last_at >= self.interval_s or decile == 10):
            self.last_decile, self.last_at = decile, now
            return True
        return False
