"""The A/B boot side: slots and which one runs, the U-Boot env, the trial it arms and decides,
health checks, the watchdog, each slot's state for `otad status`. Imports otad.config, state,
lock and the shared leaves; never install/, hawkbit/ or update.py (which hands it install records)."""
