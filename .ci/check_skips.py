"""Fail CI when a test was skipped, unless the skip is GPU-only.

Reads the JUnit XML that pytest writes with --junitxml, lists every skipped test with its reason
and exits non-zero if any skip reason is off the allowlist (reasons that mention GPU or CUDA,
any case). Expected failures (xfail) ran and are not skips; they are counted but allowed.

Usage: python .ci/check_skips.py JUNIT_XML
"""
from __future__ import annotations

import re
import sys
import xml.etree.ElementTree as ET

ALLOWED = re.compile(r"gpu|cuda", re.IGNORECASE)


def _test_id(case: ET.Element) -> str:
    classname, name = case.get("classname", ""), case.get("name", "")
    return f"{classname}::{name}" if classname else name


def _reason(skipped: ET.Element) -> str:
    # pytest puts the bare reason in `message`, and "path:line: reason" in the text.
    return (skipped.get("message") or skipped.text or "").strip()


def read_skips(xml_path) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Return (bad_skips, allowed_skips), each a list of (test id, reason)."""
    bad, allowed = [], []
    for case in ET.parse(xml_path).getroot().iter("testcase"):
        for skipped in case.findall("skipped"):
            if skipped.get("type") == "pytest.xfail":
                continue
            item = (_test_id(case), _reason(skipped))
            (allowed if ALLOWED.search(item[1]) else bad).append(item)
    return bad, allowed


def count_tests(xml_path) -> int:
    return sum(1 for _ in ET.parse(xml_path).getroot().iter("testcase"))


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    try:
        n_tests = count_tests(argv[0])
        bad, allowed = read_skips(argv[0])
    except (OSError, ET.ParseError) as e:
        print(f"check_skips: cannot read {argv[0]}: {e}", file=sys.stderr)
        return 2
    for test, reason in bad:
        print(f"SKIPPED (not allowed): {test}: {reason}")
    for test, reason in allowed:
        print(f"skipped (allowed, GPU-only): {test}: {reason}")
    print(f"skips: {len(bad) + len(allowed)} (allowed GPU-only: {len(allowed)})")
    if n_tests == 0:
        print("check_skips: no tests in the report", file=sys.stderr)
        return 1
    if bad:
        print(f"check_skips: {len(bad)} test(s) skipped for a reason other than a missing GPU; "
              "CI must run every test", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
