"""Reconciliation: determine the state of an object, take one action, re-evaluate."""
