"""Prefect flows over quantmill's library (installed as ``quantmill.flows``)."""
