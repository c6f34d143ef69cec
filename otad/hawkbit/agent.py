"""The daemon: poll hawkBit, install what it says into the inactive slot, tell it the truth.

At start the last trial's verdict becomes its action's final feedback; then it polls at the
server's pace (backoff, jitter, Retry-After), sends configData, answers cancel requests and
hands each deployment to a DeploymentRun (hawkbit/deployment.py: download, install, arming),
then reboots. `closed/success` comes only from `otad confirm` on the new slot.

The writer lock (otad.lock) is held for each operation that writes (confirming the last boot,
an install from its first state change to the arming, a cancel, dropping an unarmed install),
never while polling or sleeping. When another otad holds it, the operation waits for a later
poll and the server hears nothing about it. SIGTERM ends the loop with status 0; an install in
progress is stopped and marked interrupted, and its download goes on from the journal.
"""

from __future__ import annotations

import logging
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Set, Tuple

from otad import RELEASE_DATE, crashpoint, update
from otad.boot.trial import Verdict
from otad.config import Config, parse_date
from otad.errors import BusyError, Cancelled, ConfigError, Interrupted, OtadError
from otad.hawkbit.actions import ACTIONS_FILE, ActionLog
from otad.hawkbit.ddi import (ActionLink, Conflict, DdiClient, Deployment, HawkbitSettings, InvalidConfigData,
                              NotFound, Rejected, RootPoll, ServerError, ServerUnavailable)
from otad.hawkbit.deployment import DeploymentRun
from otad.hawkbit.journal import DownloadJournal
from otad.hawkbit.outbox import OUTBOX_FILE, Outbox, PendingFeedback
from otad.hawkbit.policy import PollPolicy
from otad.hawkbit.publish import DaemonPhase, StatusPublisher
from otad.hawkbit.suricatta import apply_swupdate_cfg
from otad.lock import HeldLock, WriterLock
from otad.notify import notify, watchdog_interval_s
from otad.progress import Progress, ProgressListener, ignore
from otad.retry import Backoff
from otad.state import Outcome, Phase, State, StateStore

log = logging.getLogger(__name__)

STATUS_INTERVAL_S = 1.0  # least time between two rewrites of daemon.json during a download


def clock_plausible(now: Optional[float] = None) -> bool:
    """No RTC on a Pi Zero: before NTP sync the clock says 1970 and timestamps would mislead."""
    return (time.time() if now is None else now) >= parse_date("release", RELEASE_DATE).timestamp()


def settings_from_config(cfg: Config) -> HawkbitSettings:
    hb = cfg.hawkbit
    if not hb.url:
        raise ConfigError("no hawkBit server configured (hawkbit.url)", cfg.source)
    limit = blocking_limit_s(cfg)
    return HawkbitSettings(url=hb.url, controller_id=hb.resolved_controller_id(), tenant=hb.tenant, auth=hb.auth,
                           token_file=hb.token_file, ca_file=hb.ca_file, client_cert=hb.client_cert,
                           client_key=hb.client_key, connect_timeout_s=min(hb.connect_timeout_s, limit),
                           read_timeout_s=min(hb.read_timeout_s, limit),
                           download_without_token=hb.download_without_token, verify_tls=hb.verify_tls)


IDLE_SLICE_MAX_S = 60.0  # the longest sleep between two looks at the clock when no watchdog asks for less


def blocking_limit_s(cfg: Config) -> float:
    """The longest one network wait or idle sleep may block: the loop feeds the watchdogs only between them.

    A connect plus a read must fit in what is left of systemd's WatchdogSec after WATCHDOG=1
    (due every half of it), and of the hardware timeout after ProgressPetter's pace (a third of
    it). A stall is then a quick reconnect with Range, not a watchdog kill mid-download.
    """
    limits = [float("inf")]
    if cfg.watchdog.enabled:
        limits.append(cfg.watchdog.timeout_s / 4)
    interval = watchdog_interval_s()
    if interval is not None:
        limits.append(interval / 2)
    return max(1.0, min(limits))


@dataclass
class AgentOptions:
    """How the loop runs; tests and scripts/fleet swap the clock, sleep and randomness."""

    once: bool = False
    reboot: bool = True
    rng: random.Random = field(default_factory=random.Random)
    sleep: Callable[[float], None] = time.sleep
    monotonic: Callable[[], float] = time.monotonic


class Agent:
    """The poll loop and what outlives one deployment: the server's pace, the feedback outbox,
    the ended actions, the writer lock per operation, the status file."""

    def __init__(self, cfg: Config, options: AgentOptions, client: Optional[DdiClient] = None) -> None:
        if not cfg.ab_enabled:
            raise ConfigError("otad run needs the A/B 'slots' section: an update is only reported as a "
                              "success after the new slot booted", cfg.source)
        cfg = apply_swupdate_cfg(cfg)
        self.cfg = cfg
        self.options = options
        self._own_client = client is None
        self.client = client or DdiClient(settings_from_config(cfg))
        state_dir = cfg.system.state_dir
        self.store = StateStore(state_dir)
        self.actions = ActionLog.load(os.path.join(state_dir, ACTIONS_FILE))
        self.outbox = Outbox(os.path.join(state_dir, OUTBOX_FILE))
        self.status = StatusPublisher(cfg.system.status_file, min_interval_s=STATUS_INTERVAL_S,
                                      clock=options.monotonic)
        hb = cfg.hawkbit
        self.poll_policy = PollPolicy(min_s=hb.poll_min_s, max_s=hb.poll_max_s, jitter_fraction=hb.poll_jitter)
        self.server_sleep_s = hb.poll_min_s  # until the server says otherwise
        self.pet: ProgressListener = ignore
        self.errors_in_a_row = 0
        self.last_error: Optional[str] = None
        self.sent_config: Optional[Dict[str, str]] = None
        self.refused_config: Optional[Dict[str, str]] = None
        self.waiting_href: Optional[str] = None  # the deploymentBase href last found "not now"
        self.answered_ended: Set[str] = set()
        self.progress_sent: Dict[str, int] = {}
        self.reboot_requested = False
        self.writer_lock = WriterLock(state_dir)
        self.held: Optional[HeldLock] = None  # the writer lock, during an operation
        self.boot_pending = False  # the last boot is not finished yet: the lock was busy at start

    # ------------------------------------------------------------------ the loop

    def run(self) -> int:
        """Until stopped; with `once`, one poll cycle: 0 if it reached the server, else 1."""
        with update.open_watchdog(self.cfg) as watchdog:
            self.pet = update.pet_on_progress(watchdog, clock=self.options.monotonic)
            try:
                delay = self.start()
                if not self.options.once:
                    self.wait(delay)
                while True:
                    delay = self.cycle()
                    if self.options.once:
                        return 0 if self.last_error is None else 1
                    self.wait(delay)
            except Interrupted as stop:
                if stop.signum != signal.SIGTERM:
                    raise
                log.log(logging.WARNING if stop.activity else logging.INFO, "%s", stop)
                return 0  # the init script's stop: a clean exit (the watchdog gets its magic close)
            finally:
                self.status.close()
                if self._own_client:
                    self.client.close()

    def start(self) -> float:
        """Finish what the last boot left and report it; the seconds to wait before the first poll."""
        self.status.publish(phase=DaemonPhase.STARTING, server=self.cfg.hawkbit.url)
        self.boot_pending = not self.locked("confirming the boot", self.finish_last_boot)
        self.outbox.flush(self.send)
        notify("READY=1", "STATUS=polling")
        # The server's sleep is not known yet: spread over the longest first wait, not poll_min_s.
        return self.poll_policy.first_delay(self.poll_policy.max_s, self.options.rng)

    def cycle(self) -> float:
        """One poll and whatever it asks for; returns the seconds until the next poll."""
        self.last_error = None
        self.outbox.flush(self.send)
        try:
            root = self.client.poll()
        except ServerError as exc:
            return self.backed_off(exc)
        if self.errors_in_a_row:
            self.errors_in_a_row = 0
            self.status.publish(last_error=None)
        self.server_sleep_s = root.sleep_s
        self.send_config_data(force=root.config_data_requested)
        try:
            if self.boot_pending:  # the lock was busy at start: the last boot is decided before anything else
                self.boot_pending = not self.locked("confirming the boot", self.finish_last_boot)
            if not self.boot_pending:
                self.dispatch(root)
        except ServerError as exc:
            return self.backed_off(exc)
        except OtadError as exc:  # local trouble (state file, slots): say so, and don't spin on it
            log.error("%s", exc)
            return self.backed_off(exc)
        self.outbox.flush(self.send)
        delay = self.poll_policy.interval(self.server_sleep_s, self.options.rng)
        self.publish_resting(next_poll_in_s=delay)
        return delay

    def dispatch(self, root: RootPoll) -> None:
        """What the root resource asks for: a cancel, a deployment, or (nothing open) forgetting."""
        if root.cancel is not None:
            cancel = root.cancel
            self.locked(f"canceling action {cancel.id}", lambda: self.handle_cancel(cancel))
        elif root.deployment is not None:
            self.handle_deployment(root.deployment)
        elif root.confirmation is None:
            self.forget_closed_action()

    def locked(self, activity: str, work: Callable[[], None]) -> bool:
        """Do `work` holding the writer lock; False (nothing done, nothing reported to the server)
        when another otad holds it: a later poll tries again."""
        try:
            held = self.writer_lock.acquire(activity)
        except BusyError as exc:
            log.info("%s waits for a later poll: %s", activity, exc)
            return False
        with held:
            self.held = held
            try:
                work()
            finally:
                self.held = None
        return True

    @property
    def writer(self) -> HeldLock:
        assert self.held is not None, "a daemon operation that writes holds the writer lock"
        return self.held

    def backed_off(self, exc: OtadError) -> float:
        """The wait after a failed cycle: short and growing for an outage, long for a refusal."""
        attempt, self.errors_in_a_row = self.errors_in_a_row, self.errors_in_a_row + 1
        cap = self.cfg.hawkbit.backoff_cap_s
        retry_after = getattr(exc, "retry_after_s", None)
        if isinstance(exc, (ServerUnavailable, Conflict)):
            delay = self.poll_policy.error_delay(attempt, min(self.server_sleep_s, cap), self.options.rng,
                                                 retry_after)
        else:
            # 401/403/404, a malformed answer, a local error: retrying soon changes nothing
            interval = self.poll_policy.clamp(self.server_sleep_s)
            slow = Backoff(base_s=interval, cap_s=max(interval, cap), jitter="none").next(attempt, self.options.rng)
            delay = max(slow * self.options.rng.uniform(1.0 - self.poll_policy.jitter_fraction, 1.0),
                        retry_after or 0.0, self.poll_policy.min_s)
        self.last_error = str(exc)
        log.warning("hawkBit: %s; next try in %.0f s", exc, delay)
        self.status.publish(phase=DaemonPhase.BACKOFF, last_error=str(exc), next_poll_in_s=delay)
        return delay

    def wait(self, seconds: float) -> None:
        """Sleep in slices so the watchdog (and systemd's) keep being fed by a live loop, waking
        only as often as they need (a signal ends a sleep at once): waking every second cost an
        idle Pi Zero 0.8 s of CPU per 5 s poll."""
        deadline = self.options.monotonic() + seconds
        slice_s = min(blocking_limit_s(self.cfg), IDLE_SLICE_MAX_S)
        while True:
            self.pet(Progress("idle"))
            notify("WATCHDOG=1")
            left = deadline - self.options.monotonic()
            if left <= 0:
                return
            self.options.sleep(min(left, slice_s))

    def publish_resting(self, **fields: object) -> None:
        state = self.store.load()
        waiting = self.actions.waiting
        if state.phase is Phase.TRIAL_ARMED:
            self.status.publish(phase=DaemonPhase.REBOOTING, action_id=state.action_id, version=state.version, **fields)
        elif waiting is not None and state.phase in (Phase.DOWNLOADED, Phase.INSTALLED):
            self.status.publish(phase=DaemonPhase.WAITING_WINDOW, action_id=waiting.action_id, version=waiting.version,
                                **fields)
        else:
            self.status.publish(phase=DaemonPhase.IDLE, action_id=None, version=None, bytes_done=0, bytes_total=None,
                                **fields)

    # ------------------------------------------------------------------ start-up

    def finish_last_boot(self) -> None:
        """Decide the trial (if `otad confirm` has not), then settle the state the last run left."""
        try:
            outcome = update.confirm_boot(self.cfg, writer=self.writer)
        except OtadError as exc:
            log.error("after boot: %s", exc)
            self.settle(trial_waiting=False)
            return
        log.info("after boot: %s: %s", outcome.verdict.value, outcome.message)
        self.settle(trial_waiting=outcome.verdict is Verdict.WAITING)
        if outcome.reboot:
            self.outbox.flush(self.send)
            self.reboot("the trial failed; switching back to the previous slot")

    def settle(self, *, trial_waiting: bool) -> None:
        """Bring a state left by a stop or a crash to one the loop continues from."""
        state = self.store.load()
        action = state.action_id
        if state.phase is Phase.FINAL_PENDING:
            self.report_final(state)
        elif state.phase in (Phase.DOWNLOADING, Phase.DOWNLOADED, Phase.INSTALLED):
            waiting = self.actions.waiting
            kept = waiting is not None and waiting.action_id == action
            if action is None or self.actions.ended_how(action) is not None or self.outbox.has_final(action):
                self.drop_unarmed(state)
            elif state.phase is Phase.DOWNLOADING and kept:
                self.store.transition(Phase.DOWNLOADED)  # the install was complete and verified
            elif state.phase is Phase.DOWNLOADING:
                saved = DownloadJournal(self.cfg.system.state_dir).load()
                where = (f"it goes on from byte {saved.point.offset}" if saved is not None and saved.action_id == action
                         else "it starts again from the beginning")
                log.warning("the download of action %s was interrupted; %s", action, where)
                self.store.transition(Phase.IDLE)
            elif not kept:
                log.warning("action %s: slot written but what arming needs is lost; installing again", action)
                self.store.transition(Phase.IDLE)
        elif state.phase is Phase.TRIAL_ARMED and action is not None and trial_waiting:
            self.feedback(action, "proceeding", f"version {state.version} is armed in slot {state.target_slot}; "
                          "rebooting to try it")
            self.reboot(f"the trial of slot {state.target_slot} is armed but the reboot did not happen")

    def report_final(self, state: State) -> None:
        """FINAL_PENDING → the action's closing feedback, queued once, then IDLE."""
        action, result = state.action_id, state.last_result
        assert action is not None and result is not None  # State checks this for FINAL_PENDING
        verdict = "success" if result.outcome is Outcome.CONFIRMED else "failure"
        ended = self.actions.ended_how(action) is not None
        if not ended and not self.outbox.has_final(action):
            self.outbox.put(action, "closed", verdict, (result.reason,), final=True)
            crashpoint.reached("agent.final_queued")
            log.info("action %s: %s: %s", action, verdict, result.reason)
        # Separately from queuing: a power cut between the two writes must not leave a queued
        # final whose action is forgotten (a re-offer of the id would then be installed again).
        if not ended:
            self.actions.end(action, verdict)
        self.store.transition(Phase.IDLE)

    def forget_closed_action(self) -> None:
        """No action is open on the server: an unarmed install waiting for its window is moot."""
        if self.store.load().phase not in (Phase.DOWNLOADED, Phase.INSTALLED):
            return

        def forget() -> None:
            state = self.store.load()  # again: another writer may have changed it meanwhile
            if state.phase in (Phase.DOWNLOADED, Phase.INSTALLED):
                self.drop_unarmed(state)

        self.locked("dropping an unarmed install", forget)

    def drop_unarmed(self, state: State) -> None:
        """Forget a written but unarmed slot (the action ended, or another one replaces it)."""
        log.info("action %s: its unarmed install in the inactive slot is dropped", state.action_id)
        self.actions.clear_waiting()
        self.waiting_href = None
        self.store.transition(Phase.IDLE)

    # ------------------------------------------------------------------ configData

    def config_data(self) -> Dict[str, str]:
        data = dict(self.cfg.hawkbit.attributes)
        version = update.running_version(self.cfg)
        if version:
            data["sw_version"] = version
        hw = _hardware(self.cfg)
        if hw is not None:
            data.setdefault("hw_boardname", hw[0])
            data.setdefault("hw_revision", hw[1])
        return data

    def send_config_data(self, *, force: bool) -> None:
        """PUT configData when asked or changed; a refusal is not repeated until the data changes."""
        data = self.config_data()
        if not data or data == self.refused_config or (not force and data == self.sent_config):
            return
        try:
            self.client.config_data(data)
        except (InvalidConfigData, Rejected, NotFound) as exc:
            log.error("configData refused (not sent again until it changes): %s", exc)
            self.refused_config = data
            return
        except ServerError as exc:
            log.warning("configData not sent (will retry): %s", exc)
            return
        self.sent_config = data

    # ------------------------------------------------------------------ deployments

    def handle_deployment(self, link: ActionLink) -> None:
        if self.already_handled(link.id) or self.reboot_requested:
            return  # after a reboot request the inactive slot may be the one about to boot
        state = self.store.load()
        if state.trial or state.phase is Phase.FINAL_PENDING:
            log.debug("action %s waits: the trial of action %s is still undecided", link.id, state.action_id)
            return
        if link.href == self.waiting_href:
            return  # same `c`: the window is still closed, nothing changed
        try:
            deployment = self.client.deployment(link)
        except NotFound:
            return  # goosebit answers null when idle; hawkBit 404s an action being canceled
        action = deployment.action_id
        if action != link.id and self.already_handled(action):
            return
        if deployment.download == "skip" and state.phase not in (Phase.DOWNLOADED, Phase.INSTALLED):
            return  # hawkBit: "not yet"
        self.locked(f"installing action {action}", lambda: self.act_on(deployment, link))

    def act_on(self, deployment: Deployment, link: ActionLink) -> None:
        """The writing part of a deployment, under the writer lock."""
        action = deployment.action_id
        state = self.store.load()  # again: another otad may have armed a trial since the poll
        if state.trial or state.phase is Phase.FINAL_PENDING:
            log.info("action %s waits: slot %s was armed meanwhile", action, state.target_slot)
            return
        run = DeploymentRun(self, deployment, link, poll_every_s=self.poll_policy.clamp(self.server_sleep_s),
                            rng=self.options.rng, clock=self.options.monotonic)
        waiting = self.actions.waiting
        if state.phase in (Phase.DOWNLOADED, Phase.INSTALLED):
            if waiting is not None and waiting.action_id == action == state.action_id:
                run.arm_when_allowed(waiting)
                return
            self.drop_unarmed(state)
        if deployment.download == "skip":
            return  # hawkBit: "not yet"
        try:
            run.install()
        except Cancelled:
            self.cancelled_while_downloading(action, run.cancel_link)

    def already_handled(self, action: str) -> bool:
        """An action that ended here is never installed again (across reboots); its final is resent
        once per run if the server still offers it after taking it."""
        if self.outbox.has_final(action):
            return True
        how = self.actions.ended_how(action)
        if how is None:
            return False
        if how in ("success", "failure") and action not in self.answered_ended:
            self.answered_ended.add(action)
            log.warning("action %s ended here before (%s) but is offered again; not installing it again", action, how)
            self.outbox.put(action, "closed", how, (f"this action already ended on this device ({how}); "
                                                    "it is not installed again",), final=True)
        return True

    # ------------------------------------------------------------------ cancel

    def handle_cancel(self, link: ActionLink) -> None:
        """Stop an action that has not switched the boot env; after the switch, refuse."""
        try:
            cancel = self.client.cancel_action(link)
        except NotFound:
            return  # no longer canceling
        stop = cancel.stop_id
        if any(e.final and e.cancel and e.action_id == cancel.action_id for e in self.outbox.pending()):
            return  # our confirmation is queued already
        state = self.store.load()
        if state.action_id == stop and (state.trial or state.phase is Phase.FINAL_PENDING):
            self.reject_cancel(cancel.action_id, f"too late: slot {state.target_slot} is armed for a trial boot; "
                                                 "the result follows")
            return
        if self.outbox.has_final(stop):
            self.reject_cancel(cancel.action_id, "the action already ended on this device; its result follows")
            return
        if state.action_id == stop and state.phase in (Phase.DOWNLOADING, Phase.DOWNLOADED, Phase.INSTALLED):
            self.drop_unarmed(state)
        elif self.actions.waiting is not None and self.actions.waiting.action_id == stop:
            self.actions.clear_waiting()
            self.waiting_href = None
        self.outbox.put(cancel.action_id, "closed", "success",
                        ("canceled before the slot switch; the boot environment was not touched",), cancel=True,
                        final=True)
        if self.actions.ended_how(stop) is None:
            self.actions.end(stop, "canceled")
        self.outbox.flush(self.send)

    def reject_cancel(self, action: str, reason: str) -> None:
        log.info("action %s: cancel refused: %s", action, reason)
        self.outbox.put(action, "rejected", "none", (reason,), cancel=True)
        self.outbox.flush(self.send)

    def cancelled_while_downloading(self, action: str, link: Optional[ActionLink]) -> None:
        log.info("action %s: canceled by the server during the download", action)
        try:
            if link is not None:
                self.handle_cancel(link)
                return
        except ServerError as exc:
            log.warning("action %s: cannot read the cancel request: %s", action, exc)
        self.outbox.put(action, "closed", "success", ("canceled during the download; the boot environment was "
                                                      "not touched",), cancel=True, final=True)
        if self.actions.ended_how(action) is None:
            self.actions.end(action, "canceled")
        self.outbox.flush(self.send)

    # ------------------------------------------------------------------ feedback and reboot

    def feedback(self, action: str, execution: str, detail: str,
                 progress: Optional[Tuple[int, Optional[int]]] = None) -> None:
        self.outbox.put(action, execution, "none", (detail,), progress)
        self.outbox.flush(self.send)

    def send(self, item: PendingFeedback) -> None:
        self.client.feedback(item.action_id, item.execution, item.finished, item.details, item.progress,
                             cancel=item.cancel, clock_ok=clock_plausible())

    def reboot(self, why: str) -> None:
        self.reboot_requested = True
        self.status.publish(phase=DaemonPhase.REBOOTING, last_error=None)
        update.reboot_if_asked(self.cfg, True, allowed=self.options.reboot,
                               say=lambda line: log.info("%s (%s)", line, why))


def _hardware(cfg: Config) -> Optional[Tuple[str, str]]:
    try:
        hw = update.hardware(cfg)
    except OtadError:
        return None
    return (hw.board, hw.revision) if hw is not None else None
