"""Writing a build's output directory atomically.

Everything is written into a hidden directory beside the target
(``.NAME.building-PID-XXXX``), which becomes the target by one rename at the end.
For an engine directory the manifest goes in last as engine.json.partial and is
renamed to engine.json only after the directory has its final name, so a build
killed at any point leaves either the old target untouched, or a directory the
engine refuses to load (engine/engine_dir.py), never a half-written engine.
An existing target is kept unless ``force``; leftovers of killed builds of the
same target are removed when their process is gone.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from pathlib import Path

from ..engine_dir import MANIFEST, PARTIAL_MANIFEST


class BuildTargetError(ValueError):
    """The output directory cannot be written; the message says what to change."""


class DirectoryWriter:
    def __init__(self, target: str | os.PathLike, force: bool = False):
        self.target = Path(target).absolute()
        parent = self.target.parent
        if not parent.is_dir():
            raise BuildTargetError(f"cannot write {self.target}: {parent} does not exist")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise BuildTargetError(f"cannot write {self.target}: {parent} is not writable")
        if self.target.exists() and not force:
            raise BuildTargetError(
                f"{self.target} already exists: remove it, choose another -o, or pass --force"
            )
        if self.target.exists() and not self.target.is_dir():
            raise BuildTargetError(f"{self.target} exists and is not a directory")
        _remove_stale_builds(parent, self.target.name)
        self.tmp = parent / f".{self.target.name}.building-{os.getpid()}-{secrets.token_hex(4)}"
        self.tmp.mkdir()
        self.files: dict[str, dict] = {}

    def path(self, name: str) -> Path:
        return self.tmp / name

    def record(self, name: str, sha256: str | None = None) -> None:
        """Adds a file written into the temporary directory to the manifest."""
        file = self.tmp / name
        digest = sha256 or _sha256(file)
        self.files[name] = {"bytes": file.stat().st_size, "sha256": digest}

    def copy(self, source: Path, name: str | None = None) -> None:
        name = name or source.name
        shutil.copyfile(source, self.tmp / name)
        self.record(name)

    def write_text(self, name: str, text: str) -> None:
        (self.tmp / name).write_text(text)
        self.record(name)

    def write_json(self, name: str, obj) -> None:
        self.write_text(name, json.dumps(obj, indent=2) + "\n")

    def commit(self, manifest: dict | None = None) -> Path:
        """Moves the finished directory into place (with ``manifest`` as its engine.json
        when given) and returns the target path."""
        if manifest is not None:
            manifest = {**manifest, "files": dict(sorted(self.files.items()))}
            partial = self.tmp / PARTIAL_MANIFEST
            partial.write_text(json.dumps(manifest, indent=2) + "\n")
            _fsync(partial)
        _fsync_dir(self.tmp)
        trash = None
        if self.target.exists():
            trash = self.target.parent / f".{self.target.name}.replaced-{secrets.token_hex(4)}"
            self.target.rename(trash)
        self.tmp.rename(self.target)
        if manifest is not None:
            (self.target / PARTIAL_MANIFEST).rename(self.target / MANIFEST)
        _fsync_dir(self.target.parent)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return self.target

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_stale_builds(parent: Path, name: str) -> None:
    """Deletes .NAME.building-PID-* directories whose process no longer runs."""
    for leftover in parent.glob(f".{name}.building-*"):
        try:
            pid = int(leftover.name.rsplit("-", 2)[1])
        except (IndexError, ValueError):
            continue
        if not _alive(pid):
            shutil.rmtree(leftover, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
