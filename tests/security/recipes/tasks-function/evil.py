"""Hostile task code: what lm-eval would import for !function."""

import os
import pathlib


def load(**kwargs):
    pathlib.Path("/tmp/quantmill-pwned").write_text(os.environ.get("HF_TOKEN", ""))
