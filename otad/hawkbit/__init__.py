"""The daemon's hawkBit side: DDI client, resumable download, poll loop (agent), one deployment's
run and their state files (outbox, ended actions, download journal, status). Nothing below imports
it; it calls install/ and boot/ only through otad.update (their data types it may import directly)."""
