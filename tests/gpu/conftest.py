"""Shared fixtures of the GPU tests (``pytest -m gpu tests/gpu``).

Every test here needs a CUDA device; the ``sm90`` fixture also skips below compute capability 9.0.
Helpers are fixtures (``rel_err``, ``poison``, ``make_routing``) so test modules need not import
this file. Seeds are fixed per test so a failure replays, but each case should draw its own inputs.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import pytest

torch = pytest.importorskip("torch")

from moe_registry.execution.patterns import relative_error, routing_pattern  # noqa: E402


def _cuda_ok() -> bool:
    return torch.cuda.is_available() and torch.cuda.device_count() > 0


@pytest.fixture(scope="session")
def cuda_device() -> "torch.device":
    """The current CUDA device; skips the test without one."""
    if not _cuda_ok():
        pytest.skip("needs a CUDA GPU")
    return torch.device("cuda", torch.cuda.current_device())


@pytest.fixture(scope="session")
def sm90(cuda_device: "torch.device") -> "torch.device":
    """A CUDA device of compute capability 9.0 or later; skips otherwise."""
    major, minor = torch.cuda.get_device_capability(cuda_device)
    if major < 9:
        pytest.skip(f"needs SM90+, this GPU is SM{major}{minor}")
    return cuda_device


@pytest.fixture(autouse=True)
def _seed(request: pytest.FixtureRequest) -> None:
    """A seed derived from the test id: stable across runs, different between cases."""
    seed = int(hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8], 16)
    torch.manual_seed(seed)
    if _cuda_ok():
        torch.cuda.manual_seed_all(seed)


@pytest.fixture(scope="session")
def rel_err() -> Callable[["torch.Tensor", "torch.Tensor"], float]:
    return relative_error


@pytest.fixture(scope="session")
def poison() -> Callable[["torch.Tensor"], "torch.Tensor"]:
    """Fill a tensor with NaN in place (to prove a kernel wrote every element of an output)."""
    def fill(t: "torch.Tensor") -> "torch.Tensor":
        return t.fill_(float("nan"))
    return fill


@pytest.fixture(scope="session")
def make_routing() -> Callable[..., "tuple[torch.Tensor, torch.Tensor]"]:
    return routing_pattern


@pytest.fixture(scope="session")
def no_host_sync() -> Callable[..., None]:
    """Run ``fn(*args)`` with torch's sync debug mode set to raise on any host synchronization (a
    forward that passes can be captured in a CUDA graph); call it once before, outside, to compile."""
    def check(fn: Callable[..., object], *args: object) -> None:
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            fn(*args)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return check
