"""otad: an over-the-air update daemon for A/B Linux devices.

Installs SWUpdate `.swu` bundles into the inactive slot, switches U-Boot with a bootcount
trial and reports the truth to a hawkBit server. See docs/architecture.md for the layout.
"""

__version__ = "0.1.0"

# Certificate validity is never checked against a clock earlier than this day: a Pi Zero has
# no RTC and boots at 1970. Bump it with each release (see otad.swu.signature).
RELEASE_DATE = "2026-11-25"
