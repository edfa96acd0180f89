"""Output files of the CLI: checked before any work, written to a new temporary file in the same
folder and renamed into place at the end (:class:`keras_lrp.safe_io.AtomicFile`), so a failed run
leaves no partial or empty file behind and a symlink at the output path is replaced, not followed."""
from __future__ import annotations

import os
from typing import IO, Dict, List, Optional

from ..safe_io import AtomicFile


class OutputError(Exception):
    """An output path cannot be written (a usage error, exit code 2)."""


class OutputFile:
    """One output (``--json``, ``--html``, ``--png``, ``--out``): written through :meth:`open`,
    then :meth:`commit` renames it to ``path``; :meth:`discard` removes it."""

    def __init__(self, option: str, path: str):
        self.option, self.path = option, path
        where = f"{option} {path}"
        if os.path.isdir(path):
            raise OutputError(f"{where}: is a folder; give a file name")
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            raise OutputError(f"{where}: the folder {folder} does not exist")
        if os.path.exists(path) and not os.access(path, os.W_OK):
            raise OutputError(f"{where}: the file is not writable")
        try:
            self.file = AtomicFile(os.path.join(folder, os.path.basename(path)))
        except OSError as err:
            raise OutputError(f"{where}: cannot write in {folder} ({err.strerror or err})") from None

    def commit(self) -> None:
        """Move the finished file into place."""
        try:
            self.file.commit()
        except OSError as err:
            raise OSError(f"{self.option} {self.path}: cannot write it ({err.strerror or err})") from None

    def discard(self) -> None:
        self.file.discard()


class Outputs:
    """The output files of one command, by option name (``"json"``, ``"html"``, ...)."""

    def __init__(self, paths: Dict[str, Optional[str]]):
        self.files: Dict[str, OutputFile] = {}
        try:
            for option, path in paths.items():
                if path:
                    if any(os.path.abspath(f.path) == os.path.abspath(path) for f in self.files.values()):
                        raise OutputError(f"--{option} {path}: the same file is given for another output")
                    self.files[option] = OutputFile(f"--{option}", path)
        except BaseException:
            self.discard()
            raise

    def __contains__(self, option: str) -> bool:
        return option in self.files

    def open(self, option: str, mode: str = "w") -> IO:
        """``option``'s file, open for writing (once; text is UTF-8)."""
        return self.files[option].file.open(mode)

    def path(self, option: str) -> str:
        return self.files[option].path

    def commit(self, options: Optional[List[str]] = None) -> None:
        for option, f in self.files.items():
            if options is None or option in options:
                f.commit()

    def discard(self) -> None:
        for f in self.files.values():
            f.discard()
