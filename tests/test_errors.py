"""Every error the platform defines has one root, and whatever says a peer is unavailable says "retry later"."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import opensegur
from opensegur.errors import OpenSegurError, RetryLater
from opensegur.flows.worker import PermanentError


def _own_exceptions() -> list[type[BaseException]]:
    found = []
    for info in pkgutil.walk_packages(opensegur.__path__, "opensegur."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        found += [
            cls
            for _name, cls in inspect.getmembers(module, inspect.isclass)
            if issubclass(cls, BaseException) and cls.__module__ == info.name
        ]
    return found


OWN = _own_exceptions()


def test_the_package_defines_its_errors() -> None:
    assert len(OWN) > 60


@pytest.mark.parametrize("cls", OWN, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_every_error_descends_from_the_root(cls: type[BaseException]) -> None:
    assert issubclass(cls, OpenSegurError)


@pytest.mark.parametrize(
    "cls", [c for c in OWN if "Unavailable" in c.__name__], ids=lambda c: f"{c.__module__}.{c.__qualname__}"
)
def test_an_unavailable_peer_is_retried_later(cls: type[BaseException]) -> None:
    assert issubclass(cls, RetryLater)


def test_a_permanent_failure_is_not_retried() -> None:
    assert not issubclass(PermanentError, RetryLater)
