"""Lock and temporary files that refuse links.

A pull request can commit a symbolic link where quantmill later creates a lock or a
temporary file (``runs/<recipe>/.cache/x.lock -> ~/.bashrc``); opening it with
``open(path, "w")`` would truncate the link's target. These helpers open with
``O_NOFOLLOW`` and refuse a folder that is itself a link.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import IO

from quantmill.errors import QuantmillError


class LinkRefusedError(QuantmillError):
    """A lock or temporary file, or its folder, is a symbolic link."""


def refuse_link_folder(folder: Path) -> None:
    """Raise when ``folder`` (the place a file is about to be created in) is a symbolic link."""
    if folder.is_symlink():
        raise LinkRefusedError(f"{folder} is a symbolic link; quantmill does not create files through links")


def open_no_follow(path: Path, mode: str = "w") -> IO[str]:
    """Open ``path`` for writing (created if missing, never truncated), refusing links.

    Raises:
        LinkRefusedError: ``path`` or its folder is a symbolic link.
    """
    refuse_link_folder(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | (os.O_APPEND if mode == "a" else 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as exc:
        if path.is_symlink():
            raise LinkRefusedError(f"{path} is a symbolic link; quantmill does not write through links") from exc
        raise
    return os.fdopen(fd, mode)
