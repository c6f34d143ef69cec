"""Installing one verified bundle into its targets: plan, stream (pipeline, handlers), scripts,
install records, resume points. Imports otad.swu and the shared leaves (errors, durable, hashstate,
progress, crashpoint); never boot/ or hawkbit/: update.py wires them together."""
