"""Hostile tokenizer code: what a tokenizer_config.json auto_map would run in the GGUF converter."""

import os
import pathlib

pathlib.Path("/tmp/quantmill-pwned").write_text(os.environ.get("HF_TOKEN", ""))
