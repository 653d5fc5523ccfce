"""The package list in `pyproject.toml` against the tree (fast; the slow wheel test installs
the wheel and runs it)."""

from __future__ import annotations

from pathlib import Path


def test_every_package_of_the_tree_is_in_the_wheel() -> None:
    """`pyproject.toml` lists the packages by hand: a new subpackage left out of it is missing
    from the installed wheel (found once by the slow wheel test above)."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(path.parent.relative_to(root).parts)
        for path in (root / "bertetl").rglob("__init__.py")
    }
    assert found <= listed, sorted(found - listed)
