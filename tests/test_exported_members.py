"""The public surface of each package: what `__all__` promises exists and is public.

(Its order is ruff's RUF022, checked by `ruff check`.)"""

from __future__ import annotations

import importlib

import pytest

PACKAGES = [
    "comptroller",
    "comptroller.config",
    "comptroller.control",
    "comptroller.control.testing",
    "comptroller.collector",
    "comptroller.analytics",
    "comptroller.dashboards",
    "comptroller.tui",
]


@pytest.mark.parametrize("name", PACKAGES)
def test_all_is_public_and_importable(name: str) -> None:
    module = importlib.import_module(name)
    exported = list(module.__all__)
    assert len(exported) == len(set(exported)), f"{name}.__all__ repeats a name"
    for member in exported:
        assert not member.startswith("_") or member == "__version__", f"{name} exports {member}"
        assert getattr(module, member, None) is not None, f"{name}.{member} does not exist"


@pytest.mark.parametrize("name", PACKAGES)
def test_exported_errors_derive_from_comptroller_error(name: str) -> None:
    from comptroller.errors import ComptrollerError

    module = importlib.import_module(name)
    for member in module.__all__:
        value = getattr(module, member)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, ComptrollerError), f"{name}.{member} is outside the error tree"
