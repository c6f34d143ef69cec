"""The one exception tree of otad.

Every failure a user can meet is an `OtadError` whose message says what went wrong, where,
and what was expected. `cli.py` prints that message as one line; nothing else prints errors.
Foreign exceptions (OSError, cryptography, zstandard, requests) are turned into these at the
edge with ``raise ... from exc``.

    OtadError
     ├── ConfigError              otad.conf / fw_env.config: file:line
     ├── UsageError               command-line arguments that do not fit together
     ├── BundleError              anything wrong with a .swu bundle
     │    ├── BundleFormatError   the CPIO container: offset, member
     │    ├── ManifestError       sw-description: line, key
     │    ├── SignatureError      signature missing, malformed or untrusted
     │    ├── CompatibilityError  hardware, selection or version policy refuses the bundle
     │    └── ImageError          one image of the bundle: name
     │         ├── ImageHashMismatch
     │         ├── DecompressError
     │         ├── ImageTooLarge
     │         └── DecryptError   AES: no key, wrong key, bad padding, truncated
     ├── InstallError             writing to a target (device or file) failed
     │    └── ResumeError         a saved resume point cannot be taken up: start over
     ├── HashStateError           a saved hash state cannot be taken up
     ├── EnvError                 U-Boot environment
     │    └── EnvCorrupt          no copy with a good CRC
     ├── SlotError                A/B slot model: booted slot unknown, bad transition
     ├── StateError               otad's persistent state: a file, a transition
     │    └── StateCorrupt        a state file's content cannot be read (otad.statefile)
     ├── BusyError                another otad process holds the writer lock (exit 75)
     ├── WatchdogError            /dev/watchdog
     ├── ServerError              a hawkBit request failed: url, status, retry_after_s
     │    ├── ServerUnavailable   no answer, 5xx, rate-limit 429: retry later
     │    │    └── DownloadInterrupted  an artifact download ran out of retries: position
     │    ├── QuotaExceeded, AuthError (401), Forbidden (403), NotFound (404),
     │    │   Conflict (409), Gone (410), Rejected (other 4xx)
     │    └── MalformedResponse   the answer is not DDI: field
     ├── DownloadError            an artifact download cannot go on: url, position
     │    ├── RestartRequired     the server cannot continue there: restart the install
     │    ├── HashMismatch        the artifact's bytes do not have the announced hash
     │    ├── SizeMismatch        the server's size is not the deployment's
     │    └── Cancelled           the download was asked to stop (a cancel)
     ├── UnsupportedDeployment    a deployment otad cannot carry out
     ├── InvalidConfigData        configData hawkBit would refuse
     └── DeltaError               delta updates (otad/delta): zchunk data, sources, Range fetches
          ├── ZckFormatError      a malformed zchunk header: field, offset
          ├── ZckHeaderMismatch   the header is not the one the signed sw-description names
          ├── ChunkDataError      chunk data: digest, decompression or length wrong
          ├── SourceIndexError    a source cannot be read or chunked
          ├── MalformedMultipart  a multipart/byteranges body otad cannot read: offset
          └── RangeFetchError     Range requests failed past every fallback: url
               └── ArtifactChanged  the file changed on the server mid-fetch (ETag)

    KeyboardInterrupt
     └── Interrupted              SIGINT, SIGTERM or SIGHUP (exit 130); not an OtadError, so no
                                  handler takes a stop request for a failed install
"""

from __future__ import annotations

import signal
from typing import Optional, Tuple

# Exit statuses (README "Exit status"). Every family below states its own: a status it keeps
# whatever the step (USAGE, VERIFICATION, BUSY), or OTHER, which `at_stage` turns into the
# status of the install step the error ended (REFUSED while planning, WRITE_FAILED once
# writing had started) and which stays 1 anywhere else (otad env, confirm, status, run).
OTHER = 1  # any other error
USAGE = 2  # the command line or a configuration file
REFUSED = 3  # the bundle was refused before anything was written
VERIFICATION = 4  # signature or image hash
WRITE_FAILED = 5  # the install failed while writing (target, handler, script, env write)
BUSY = 75  # another writer holds the lock: try again later (sysexits' EX_TEMPFAIL)
INTERRUPTED = 130  # SIGINT, SIGTERM, SIGHUP: 128 + SIGINT, as a shell reports Ctrl-C


class OtadError(Exception):
    """Base of every error otad reports to a user.

    `where` names the input and the position in it (``sw-description:14``,
    ``bundle.swu@0x1a4``, ``/etc/otad/otad.conf:7``); `what` says what is wrong.
    """

    exit_code = OTHER

    def __init__(self, what: str, where: Optional[str] = None) -> None:
        self.what = what
        self.where = where
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return f"{self.where}: {self.what}" if self.where else self.what

    def at_stage(self, status: int) -> "OtadError":
        """Return this error with the exit status of the step it ended (REFUSED, WRITE_FAILED),
        unless it has a status of its own already; the first step to set one wins."""
        if self.exit_code == OTHER:
            self.exit_code = status
        return self

    def within_once(self, context: str) -> "OtadError":
        """`within(context)`, unless `where` starts with `context` already."""
        return self if self.where is not None and self.where.startswith(context) else self.within(context)

    def within(self, context: str) -> "OtadError":
        """Return this error with `context` prepended to `where` (context grows as it climbs)."""
        self.where = f"{context}: {self.where}" if self.where else context
        self.args = (str(self),)
        return self


class ConfigError(OtadError):
    """A configuration file is malformed or names something that does not exist."""

    exit_code = USAGE


class UsageError(OtadError):
    """Command-line arguments that argparse accepts but that do not fit together."""

    exit_code = USAGE


class BundleError(OtadError):
    """The bundle cannot be installed."""

    exit_code = OTHER  # by step: refused while planning, failed once writing (otad info: refused)


class BundleFormatError(BundleError):
    """The CPIO container is malformed (magic, header, padding, names, checksum, truncation)."""


class ManifestError(BundleError):
    """sw-description is malformed or has a value of the wrong type."""


class SignatureError(BundleError):
    """The signature is missing, malformed, does not match or does not chain to a trusted key."""

    exit_code = VERIFICATION


class CompatibilityError(BundleError):
    """The bundle is valid but not for this device: hardware, selection or version policy."""


class ImageError(BundleError):
    """One image of the bundle failed; `image` names it."""

    def __init__(self, what: str, image: str, where: Optional[str] = None) -> None:
        self.image = image
        super().__init__(what, where if where is not None else f"image {image!r}")


class ImageHashMismatch(ImageError):
    """The sha256 over the stored bytes differs from sw-description."""

    exit_code = VERIFICATION


class DecompressError(ImageError):
    """The compressed stream is corrupt or exceeds its limits."""


class ImageTooLarge(ImageError):
    """The decoded image would pass the end of its target (or a configured cap)."""


class DecryptError(ImageError):
    """An encrypted image cannot be decrypted: no key configured, wrong key or IV, bad PKCS#7
    padding, or ciphertext that is not whole AES blocks (truncated)."""


class InstallError(OtadError):
    """Writing to a target failed, or an install step could not complete."""

    exit_code = OTHER  # by step: a target refused while planning, a write that failed


class ResumeError(InstallError):
    """A saved resume point cannot be taken up (the slot or the bundle changed): start over."""


class HashStateError(OtadError):
    """A saved hash state cannot be taken up (other algorithm, size or library)."""

    exit_code = OTHER  # never reaches a user: the download journal takes it as unreadable


class EnvError(OtadError):
    """The U-Boot environment cannot be read or written."""

    exit_code = OTHER  # by step in an install (bootenv rules: refused; the env write: failed)


class EnvCorrupt(EnvError):
    """No copy of the U-Boot environment has a valid CRC."""


class SlotError(OtadError):
    """The A/B slot model cannot answer: unknown booted slot, illegal transition."""

    exit_code = OTHER  # by step in an install (no target slot: refused)


class StateError(OtadError):
    """otad's persistent state is unreadable or a transition is not allowed."""

    exit_code = OTHER  # by step in an install; else 1 (the way on: `otad state reset`)


class StateCorrupt(StateError):
    """A state file's content is not what otad wrote: what happens to the file is its store's
    policy (otad.statefile: kept, set aside, or only shown)."""


class BusyError(OtadError):
    """Another otad process holds the writer lock (otad.lock); `holder` says who and what it does.
    Exit 75, sysexits' EX_TEMPFAIL: nothing was done, try again later."""

    exit_code = BUSY

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(f"busy: {holder}")


class WatchdogError(OtadError):
    """/dev/watchdog could not be opened or driven."""

    exit_code = OTHER  # opened before an install begins; petting during one fails it (by step)


class ServerError(OtadError):
    """A hawkBit request failed; `url` is the request, `status` the HTTP code (None: no answer)."""

    exit_code = OTHER  # the daemon retries; only its start can end with one

    def __init__(self, what: str, url: Optional[str] = None, status: Optional[int] = None, *,
                 retry_after_s: Optional[float] = None) -> None:
        self.url = url
        self.status = status
        self.retry_after_s = retry_after_s
        super().__init__(what, url)


class ServerUnavailable(ServerError):
    """No answer, a 5xx, or a 429 from a rate limiter: retry later (after `retry_after_s` if set)."""


class QuotaExceeded(ServerError):
    """429 with a hawkBit quota error: permanent for this action (stop intermediate feedback)."""


class AuthError(ServerError):
    """401, or the token file cannot be read: credentials are missing or wrong."""


class Forbidden(ServerError):
    """403: blacklisted, auth mode disabled on the server, or no permission."""


class NotFound(ServerError):
    """404 (unknown target, action or artifact; action not in that state), or goosebit's `null`."""


class Conflict(ServerError):
    """409: concurrent modification on the server; retry soon."""


class Gone(ServerError):
    """410: the action is closed (feedback counts as delivered) or the artifact was deleted."""


class Rejected(ServerError):
    """Another 4xx (400, 405, 412, 422, ...): the server refused this request as sent."""


class MalformedResponse(ServerError):
    """The answer is not what DDI specifies; `field` is the JSON path or header concerned."""

    def __init__(self, detail: str, url: Optional[str] = None, status: Optional[int] = None, *,
                 field: Optional[str] = None) -> None:
        self.detail = detail
        self.field = field
        super().__init__(f"{field}: {detail}" if field else detail, url, status)


class DownloadError(OtadError):
    """An artifact download (hawkbit/download.py) cannot go on; `url` is the artifact, `position`
    the byte reached."""

    exit_code = OTHER  # the daemon reports it to the server; in an install: by step

    def __init__(self, what: str, url: str, position: int) -> None:
        self.url = url
        self.position = position
        super().__init__(what, url)


class RestartRequired(DownloadError):
    """The server cannot continue at `position` (200 to a Range, stale If-Range, 416, new ETag).

    The consumer has already used the earlier bytes: the caller restarts the whole install.
    """


class HashMismatch(DownloadError):
    """The bytes delivered do not have the hash the deployment announced."""


class SizeMismatch(DownloadError):
    """The server's size disagrees with the deployment's, or it sent more bytes than that."""


class Cancelled(DownloadError):
    """The download's `should_stop()` asked it to stop (the server cancels the action)."""


class DownloadInterrupted(ServerUnavailable):
    """Retries ran out (attempts or time) while the server kept failing; `position` was reached."""

    def __init__(self, what: str, url: str, position: int) -> None:
        self.position = position
        super().__init__(what, url)


class UnsupportedDeployment(OtadError):
    """A well-formed deployment otad cannot carry out (not exactly one .swu, no usable hash)."""

    exit_code = OTHER  # reported to the server, never an exit status


class InvalidConfigData(OtadError):
    """configData attributes that hawkBit would refuse; raised before anything is sent."""

    exit_code = OTHER  # logged by the daemon, never an exit status


class Interrupted(KeyboardInterrupt):
    """SIGINT, SIGTERM or SIGHUP stopped the command (otad.signals raises it).

    Not an OtadError on purpose: the handlers that turn a failure into a failed install (and
    report it to hawkBit) must let a stop request through. `activity` is what was stopped,
    `outcome` what that left behind; `written` the install targets it had started writing.
    """

    exit_code = INTERRUPTED

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.activity: Optional[str] = None
        self.outcome: Optional[str] = None
        self.written: Tuple[str, ...] = ()
        super().__init__(signum)

    @property
    def verb(self) -> str:
        return "interrupted" if self.signum == signal.SIGINT else "terminated"

    def during(self, activity: str, outcome: Optional[str] = None) -> "Interrupted":
        """This stop request, saying what it stopped and what that left (for the one line)."""
        self.activity, self.outcome = activity, outcome
        return self

    def __str__(self) -> str:
        text = self.verb + (f" while {self.activity}" if self.activity else "")
        return text + (f"; {self.outcome}" if self.outcome else "")


class DeltaError(OtadError):
    """A delta update cannot go on: its zchunk data, its source or its chunk server failed."""

    exit_code = OTHER  # by step, except the digests of signed data (VERIFICATION)


class ZckFormatError(DeltaError):
    """A zchunk header is malformed; `field` names the part, `offset` its byte in the header."""

    def __init__(self, what: str, name: str, field: str, offset: int) -> None:
        self.name = name
        self.field = field
        self.offset = offset
        super().__init__(f"{field}: {what}", f"{name}@{offset:#x}")


class ZckHeaderMismatch(DeltaError):
    """The zchunk header's sha256 is not the one the signed sw-description carries."""

    exit_code = VERIFICATION


class ChunkDataError(DeltaError):
    """One chunk's bytes are wrong: digest, decompression or length; `chunk` is its number."""

    exit_code = VERIFICATION

    def __init__(self, what: str, chunk: int, where: Optional[str] = None) -> None:
        self.chunk = chunk
        super().__init__(what, where if where is not None else f"chunk {chunk}")


class SourceIndexError(DeltaError):
    """A source (a slot, an image file) cannot be read or chunked."""


class MalformedMultipart(DeltaError):
    """A multipart/byteranges body is not what RFC 2046 or old hawkBit writes; `offset` is the
    body byte where reading stopped. The fetcher falls back to single ranges on it."""

    def __init__(self, what: str, offset: int) -> None:
        self.offset = offset
        super().__init__(what, f"multipart body@{offset}")


class RangeFetchError(DeltaError):
    """Range requests to `url` failed even after falling back to single ranges and a full read."""

    def __init__(self, what: str, url: str) -> None:
        self.url = url
        super().__init__(what, url)


class ArtifactChanged(RangeFetchError):
    """The file behind `url` changed on the server while chunks were being fetched (new ETag)."""
