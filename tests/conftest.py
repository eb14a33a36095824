"""Fixtures shared by the CPU tests. Torch-free: collecting a test module that skips without torch
must still work.

The shared factories (a small layer, routed inputs, the relative error) are plain functions in
``_factories.py``, imported by the test modules: parametrize tables need them at import time, and
``from conftest import ...`` would be unreliable (``tests/gpu/conftest.py`` has the same module
name). Selection helpers (test declarations, ``assert_selected``) are in ``_decl_helpers.py``."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="module")
def flashinfer(tmp_path_factory):
    """``flashinfer`` imported with its JIT workspace in a temporary directory (set once per session,
    before the first import), or a skip where it does not import."""
    os.environ.setdefault("FLASHINFER_WORKSPACE_BASE", str(tmp_path_factory.mktemp("fi_ws")))
    try:
        import flashinfer as fi
        import flashinfer.fused_moe  # noqa: F401  (also imports fused_moe.prepare, FlashInfer's weight prep)
    except Exception as exc:  # noqa: BLE001
        pytest.skip(f"flashinfer does not import here: {type(exc).__name__}: {exc}")
    return fi


@pytest.fixture(autouse=True, scope="session")
def _private_plugin_cache(tmp_path_factory):
    """Plugin evaluations are cached under ``$XDG_CACHE_HOME/moe-registry``: the tests use a
    directory of their own, never the user's cache."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg_cache"))


@pytest.fixture(autouse=True)
def _fresh_selections():
    """Every test selects afresh: an answer cached by an earlier test (or by the mutation tester's
    warm-up run in the parent process, benchmarks/mutation.sh) would hide the code under test."""
    from moe_registry.selection import _resolve

    _resolve.cache_clear()
