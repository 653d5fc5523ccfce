"""`make test` runs every test: its Ray phase collects only RAY_TESTS, so each module with a
Ray test must be under one of them (phase one deselects Ray tests everywhere)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_every_ray_test_is_in_the_ray_phase() -> None:
    makefile = (REPO / "Makefile").read_text()
    (line,) = re.findall(r"^RAY_TESTS := (.+)$", makefile, flags=re.MULTILINE)
    phase = [REPO / path for path in line.split()]
    assert all(path.exists() for path in phase), phase
    assert "-m ray $(RAY_TESTS)" in makefile
    with_ray = [
        path
        for path in (REPO / "tests").rglob("test_*.py")
        if re.search(r"pytest\.mark\.ray\b", path.read_text())
    ]
    assert with_ray, "no Ray test found: the pattern no longer matches how they are marked"
    outside = [p for p in with_ray if not any(p == q or q in p.parents for q in phase)]
    assert not outside, f"Ray tests that make test would never run: {outside}"
