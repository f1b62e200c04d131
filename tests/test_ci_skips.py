"""`.ci/check_skips.py`: CI fails on a skipped test unless the skip is GPU-only."""
from __future__ import annotations

import importlib.util
from pathlib import Path

_spec = importlib.util.spec_from_file_location("check_skips", Path(__file__).parents[1] / ".ci" / "check_skips.py")
check_skips = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_skips)


def _junit(path: Path, skipped: str) -> Path:
    path.write_text(f"""<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="pytest" errors="0" failures="0" skipped="1" tests="3">
<testcase classname="tests.test_a" name="test_runs" time="0.01" />
<testcase classname="tests.test_a" name="test_skipped" time="0.00">{skipped}</testcase>
<testcase classname="tests.test_a" name="test_xfail" time="0.00"><skipped type="pytest.xfail" message="known bug" /></testcase>
</testsuite></testsuites>
""")
    return path


def test_gpu_only_skip_is_allowed(tmp_path, capsys):
    xml = _junit(tmp_path / "gpu.xml", '<skipped type="pytest.skip" message="needs a CUDA GPU">'
                                      "tests/test_a.py:9: needs a CUDA GPU</skipped>")
    assert check_skips.read_skips(xml) == ([], [("tests.test_a::test_skipped", "needs a CUDA GPU")])
    assert check_skips.main([str(xml)]) == 0
    assert "skips: 1 (allowed GPU-only: 1)" in capsys.readouterr().out


def test_missing_chromium_skip_fails(tmp_path, capsys):
    reason = "Debian's chromium is not installed"
    xml = _junit(tmp_path / "chromium.xml", f'<skipped type="pytest.skip" message="Debian&apos;s chromium is not '
                                            f'installed">tests/test_a.py:75: {reason}</skipped>')
    assert check_skips.read_skips(xml) == ([("tests.test_a::test_skipped", reason)], [])
    assert check_skips.main([str(xml)]) == 1
    out = capsys.readouterr().out
    assert reason in out and "skips: 1 (allowed GPU-only: 0)" in out


def test_missing_or_empty_report_fails(tmp_path):
    assert check_skips.main([str(tmp_path / "absent.xml")]) == 2
    empty = tmp_path / "empty.xml"
    empty.write_text('<testsuites><testsuite name="pytest" tests="0" /></testsuites>')
    assert check_skips.main([str(empty)]) == 1
