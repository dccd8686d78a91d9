"""The app process's own scratch directory: Gradio's cache and the exports live there, and nowhere else.

:func:`claim` makes a fresh ``coalora-app-<pid>-*`` directory under the system temp directory (or
under ``$GRADIO_TEMP_DIR`` when the operator set one), points ``GRADIO_TEMP_DIR`` at its ``gradio``
subdirectory (and ``GRADIO_EXAMPLES_CACHE``, the other directory Gradio serves, inside it) and removes it when the process exits (atexit; SIGTERM, what a Space or a supervisor
sends, exits through it too). So the app never serves a file written by an earlier process, and a
stopped app leaves nothing behind. Scratch directories of processes that died without cleaning up
(SIGKILL) are removed by the next :func:`claim`.

Call it before gradio is imported: gradio reads ``GRADIO_TEMP_DIR`` when it builds an app.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import signal
import tempfile
from pathlib import Path

PREFIX = "coalora-app-"
_NAME = re.compile(rf"^{PREFIX}(\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def sweep(parent: Path) -> list[Path]:
    """Remove the scratch directories under ``parent`` whose process is gone; returns them."""
    gone = []
    if not parent.is_dir():
        return gone
    for d in parent.iterdir():
        m = _NAME.match(d.name)
        if m and d.is_dir() and int(m.group(1)) != os.getpid() and not _alive(int(m.group(1))):
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    return gone


def _exit_on_sigterm(signum: int, frame) -> None:  # noqa: ARG001 (signal handler signature)
    """SIGTERM as Ctrl-C: Gradio's launch loop closes the server and the process exits through atexit."""
    raise KeyboardInterrupt


def claim() -> Path:
    """This process's fresh scratch directory (``GRADIO_TEMP_DIR`` now points inside it)."""
    parent = Path(os.environ.get("GRADIO_TEMP_DIR") or tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    sweep(parent)
    root = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)).resolve()
    (root / "gradio").mkdir()
    os.environ["GRADIO_TEMP_DIR"] = str(root / "gradio")
    os.environ["GRADIO_EXAMPLES_CACHE"] = str(root / "examples")  # else ./.gradio/cached_examples, also served
    atexit.register(shutil.rmtree, root, True)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    return root
