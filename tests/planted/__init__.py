"""Helpers for the planted-bug catalogue and the mutation-killing tests (see mutation/README.md)."""
