"""Prefect tasks: thin wrappers over quantmill's library calls (installed as ``quantmill.tasks``)."""
