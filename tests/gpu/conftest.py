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


def relative_error(out: "torch.Tensor", ref: "torch.Tensor") -> float:
    """``||out - ref|| / ||ref||`` in float64; ``inf`` when ``out`` has a NaN or inf."""
    out64, ref64 = out.detach().double(), ref.detach().double()
    if not bool(torch.isfinite(out64).all()):
        return float("inf")
    denom = float(ref64.norm())
    diff = float((out64 - ref64).norm())
    return diff / denom if denom > 0 else diff


@pytest.fixture(scope="session")
def rel_err() -> Callable[["torch.Tensor", "torch.Tensor"], float]:
    return relative_error


@pytest.fixture(scope="session")
def poison() -> Callable[["torch.Tensor"], "torch.Tensor"]:
    """Fill a tensor with NaN in place (to prove a kernel wrote every element of an output)."""
    def fill(t: "torch.Tensor") -> "torch.Tensor":
        return t.fill_(float("nan"))
    return fill


def routing(T: int, E: int, k: int, *, device, generator=None, kind: str = "random",
            ids_dtype=None) -> "tuple[torch.Tensor, torch.Tensor]":
    """``(topk_weights fp32 [T, k], topk_ids [T, k])`` for test routing patterns.

    ``random``: top-k of a softmax of Gaussian logits. ``imbalanced``: logits skewed so a handful of
    experts take most tokens. ``empty``: random, but experts 0 and E-1 (first and last group) and
    every third expert get no tokens (needs enough experts left for k).
    """
    ids_dtype = ids_dtype or torch.int32
    logits = torch.randn(T, E, device=device, generator=generator)
    if kind == "imbalanced":
        logits = logits + torch.linspace(6.0, 0.0, E, device=device) ** 2 / 4
    elif kind == "empty":
        banned = torch.zeros(E, dtype=torch.bool, device=device)
        banned[0::3] = True
        banned[E - 1] = True
        if int((~banned).sum()) < k:
            raise ValueError(f"'empty' routing needs at least {k} experts left of {E}")
        logits = logits.masked_fill(banned, float("-inf"))
    elif kind != "random":
        raise ValueError(f"unknown routing kind {kind!r}")
    weights, ids = torch.topk(torch.softmax(logits, dim=-1), k, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.float().contiguous(), ids.to(ids_dtype).contiguous()


@pytest.fixture(scope="session")
def make_routing() -> Callable[..., "tuple[torch.Tensor, torch.Tensor]"]:
    return routing
