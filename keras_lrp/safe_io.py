"""Writing what carries untrusted input: output files created fresh, text escaped for terminals.

Files: every output of keras_lrp (the CLI's ``--json`` / ``--html`` / ``--png`` / ``--out``, the Ray
path's ``ids.jsonl``, shards and ``out.jsonl``, :meth:`keras_lrp.Explanation.save`, the heatmap
writers) goes through :class:`AtomicFile`: it is written to a new file with an unpredictable name in
the target's folder (``tempfile.mkstemp``: ``O_CREAT | O_EXCL | O_NOFOLLOW``) and renamed over the
target at the end (``os.replace``). A symlink planted at the target is replaced, never followed; a
failed write leaves the target as it was; the mode is ``0o666 & ~umask``, as ``open(path, "w")``
would create it.

Terminal text: :func:`printable` shows control characters (C0, DEL, C1) and the bidirectional
controls as ``\\x1b`` / ``\\u202e`` escapes, so no input can move the cursor, set the window title or
reorder what is printed after it; :func:`quote` also cuts long text for messages.
"""
from __future__ import annotations

import contextlib
import os
import re
import stat
import tempfile
from pathlib import Path
from typing import IO, Iterator, Optional, Union

__all__ = ["AtomicFile", "atomic_open", "atomic_write", "read_own_file", "output_mode", "printable", "quote"]

PathLike = Union[str, "os.PathLike[str]"]


def output_mode() -> int:
    """The mode a new output file gets: ``0o666`` less the process's umask."""
    return 0o666 & ~_umask()


def _umask() -> int:
    try:     # Linux: read it without changing it (os.umask() sets it, racing other threads)
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class AtomicFile:
    """A new file for ``path``: write it through :meth:`open`, then :meth:`commit` renames it
    over ``path``, or :meth:`discard` removes it. The temporary file is created at once, so a
    folder that cannot be written fails here, before any work. As a context manager it commits
    on success and discards on an exception; :func:`atomic_open` is the one-call form.

    Args:
        path: the file to write; its folder must exist.
        durable: ``fsync`` the data before the rename (the file survives a crash of the machine).
    """

    def __init__(self, path: PathLike, *, durable: bool = False):
        self.path = Path(path)
        self.durable = durable
        # same folder (so the rename is atomic), same extension (matplotlib and numpy look at it)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part" + self.path.suffix,
                                   dir=self.path.parent)
        self.tmp = Path(tmp)
        try:
            os.fchmod(fd, output_mode())
        except OSError:
            os.close(fd)
            os.unlink(tmp)
            raise
        self._fd: Optional[int] = fd
        self._file: Optional[IO] = None
        self.done = False

    def open(self, mode: str = "w", encoding: str = "utf-8") -> IO:
        """The temporary file, open for writing ("w" text, UTF-8 by default, or "wb"); once."""
        if self._fd is None:
            raise ValueError(f"{self.path}: the file is already open or finished")
        self._file = os.fdopen(self._fd, mode, encoding=None if "b" in mode else encoding)
        self._fd = None
        return self._file

    def commit(self) -> Path:
        """Flush, close and move the file into place; returns ``path``."""
        if self.done:
            raise ValueError(f"{self.path}: already committed or discarded")
        try:
            if self._file is not None:
                if not self._file.closed:
                    self._file.flush()
                    if self.durable:
                        os.fsync(self._file.fileno())
                    self._file.close()
            elif self._fd is not None:
                if self.durable:
                    os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None
            os.replace(self.tmp, self.path)
        except BaseException:
            self.discard()
            raise
        self.done = True
        return self.path

    def discard(self) -> None:
        """Remove the temporary file (nothing happens to ``path``)."""
        if self.done:
            return
        self.done = True
        try:
            if self._file is not None:
                self._file.close()
            elif self._fd is not None:
                os.close(self._fd)
                self._fd = None
        finally:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass

    def __enter__(self) -> "AtomicFile":
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if not self.done:
            self.commit() if kind is None else self.discard()


@contextlib.contextmanager
def atomic_open(path: PathLike, mode: str = "w", *, encoding: str = "utf-8",
                durable: bool = False) -> Iterator[IO]:
    """``open(path, mode)`` for writing through :class:`AtomicFile`: ``path`` appears, complete,
    when the block ends without an exception; otherwise nothing changes."""
    with AtomicFile(path, durable=durable) as pending:
        yield pending.open(mode, encoding)


def atomic_write(path: PathLike, data: Union[bytes, str], *, durable: bool = False) -> Path:
    """Write ``data`` (bytes, or str as UTF-8) to ``path`` through :class:`AtomicFile`."""
    with atomic_open(path, "wb" if isinstance(data, bytes) else "w", durable=durable) as f:
        f.write(data)
    return Path(path)


def read_own_file(path: PathLike) -> bytes:
    """The bytes of a file keras_lrp wrote earlier (a Ray run's shards and their records, read back
    to resume): read only if ``path`` itself is a regular file. A symlink planted there (to
    ``/dev/zero``, a FIFO, another file) raises ``OSError`` instead of being followed, so the caller
    treats the file as missing and writes it again (:class:`AtomicFile` replaces the link)."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path}: not a regular file")
        return f.read()


# ----------------------------------------------------------------------------------------- terminal

# C0 controls, DEL, C1 controls, and the bidirectional formatting characters (embeddings,
# overrides, isolates, marks): each would act on the terminal or on the text printed after it.
_UNPRINTABLE_RE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def _escape(match: "re.Match[str]") -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with control and bidi-control characters shown as ``\\x..`` / ``\\u....``
    escapes (tabs and newlines too), safe to print on a terminal."""
    return _UNPRINTABLE_RE.sub(_escape, text)


def quote(text: str, limit: int = 80) -> str:
    """``text`` for a message: at most ``limit`` characters, :func:`printable`, in quotes; a
    longer text is cut and its length said (``'xxxx…' (10,000,000 characters)``)."""
    if len(text) <= limit:
        return "'" + printable(text) + "'"
    return f"'{printable(text[:limit])}…' ({len(text):,} characters)"
