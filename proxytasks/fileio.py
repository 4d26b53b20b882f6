"""Atomic file output: write to a temporary file beside the target, then rename."""
from __future__ import annotations

import contextlib
import gzip
import io
import os
import tempfile
from pathlib import Path
from typing import IO, Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", gz: bool | None = None) -> Iterator[IO]:
    """Open a temporary file next to ``path``; on success it replaces ``path``.

    On any exception (Ctrl-C included) the temporary file is removed and ``path``
    keeps its previous content, so no reader ever sees a half-written file.

    Args:
        path: final destination.
        mode: ``"w"`` for text or ``"wb"`` for bytes.
        gz: gzip-compress; defaults to ``path`` ending in ``.gz``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz is None:
        gz = path.suffix == ".gz"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as raw:
            with contextlib.ExitStack() as stack:
                stream: IO = raw
                if gz:
                    stream = stack.enter_context(gzip.GzipFile(fileobj=raw, mode="wb", mtime=0))
                if "b" not in mode:
                    text = io.TextIOWrapper(stream, encoding="utf-8", newline="\n")
                    yield text
                    text.flush()
                    text.detach()
                else:
                    yield stream
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def refuse_overwrite(path: str | os.PathLike, what: str, how: str = "", overwrite: bool = False,
                     holds: bool | None = None) -> None:
    """Stop before replacing ``path`` when it already holds ``what`` (a file a person may
    have edited, or results), unless ``overwrite``.

    Args:
        path: the output a command is about to write.
        what: what is there, for the message ("a suggestion sheet with 12 answers").
        how: how to go on without replacing it (another output, ``--resume``, ...).
        overwrite: the command's ``--overwrite``: replace it.
        holds: whether ``path`` holds it (default: it exists).

    Raises:
        ProxytasksError: naming the path, what it holds and how to go on (exit code 2).
    """
    from .errors import ProxytasksError

    path = Path(path)
    if overwrite or not (path.exists() if holds is None else holds):
        return
    how = f"{how.rstrip('.')}; " if how else ""
    raise ProxytasksError(f"{path} already holds {what}; refusing to replace it. {how}or pass --overwrite "
                          f"to replace it")
