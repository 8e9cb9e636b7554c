"""kopf wiring: watch events feed the work queue; startup/cleanup start and stop the workers."""
