"""An Environment handed to selection and planning: no I/O at all, and the environment (not this
machine) decides packages, device and the backend override."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess

import pytest

from _decl_helpers import BASE, SRC, assert_selected, decl, registry
from moe_registry import selection as selection_module
from moe_registry.environment import Environment, RequirementState, this_machine
from moe_registry.errors import InvalidDevice, NoEligibleBackend
from moe_registry.planner import PlanError, plan_model
from moe_registry.schemas.capability import Requirement
from moe_registry.schemas.device import get_device
from moe_registry.schemas.quant import QuantFamily
from moe_registry.schemas.selection import ReasonCode
from moe_registry.selection import select_backend

H100 = get_device("h100")
NEEDS_PKG = Requirement(kind="package", name="fancy-kernels", import_name="fancy_kernels", source=SRC)


_REAL_ENVIRON = os.environ
# The mutation tester's own switches (benchmarks/mutation.sh): its trampoline reads them around every
# mutated function; selection never does.
_TOOL_KEYS = ("MUTANT_UNDER_TEST", "MUTMUT_DEPENDENCY_DEPTH")


class _NoEnviron(dict):
    """os.environ that fails the test on any read (but the mutation tester's own key)."""

    def _fail(self, *args, **kwargs):
        raise AssertionError("selection read os.environ although it was handed an Environment")

    def _allowed(self, key: str) -> str:
        if key not in _TOOL_KEYS:
            self._fail()
        return key

    def __getitem__(self, key):
        return _REAL_ENVIRON[self._allowed(key)]

    def get(self, key, default=None):
        return _REAL_ENVIRON.get(self._allowed(key), default)

    def __contains__(self, key):
        return self._allowed(key) in _REAL_ENVIRON

    __iter__ = __len__ = keys = items = copy = _fail


@pytest.fixture
def forbid_io(monkeypatch):
    """Call it after the test's setup: from then on any process, environment-variable, PATH or
    import-path probe fails the test."""
    return lambda: _forbid_io(monkeypatch)


def _forbid_io(monkeypatch) -> None:
    def fail(what):
        def _raise(*args, **kwargs):
            raise AssertionError(f"selection did I/O ({what}) although it was handed an Environment")
        return _raise

    selection_module._resolve.cache_clear()  # a cached answer would prove nothing
    for target, name in ((subprocess, "run"), (subprocess, "Popen"), (subprocess, "check_output"),
                         (shutil, "which"), (importlib.util, "find_spec")):
        monkeypatch.setattr(target, name, fail(f"{target.__name__}.{name}"))
    monkeypatch.setattr("moe_registry.environment.detect_device", fail("detect_device"))
    monkeypatch.setattr("moe_registry.environment.probe_environment", fail("probe_environment"))
    monkeypatch.setattr("moe_registry.registry.Registry.environment", fail("Registry.environment"))
    monkeypatch.setattr(os, "environ", _NoEnviron())


def env(satisfied: bool | None = None, **fields) -> Environment:
    states = () if satisfied is None else (
        RequirementState(backend="t-a", name=NEEDS_PKG.name, satisfied=satisfied,
                         detail="fancy_kernels importable" if satisfied else "fancy_kernels is not installed"),)
    return Environment(planning=False, requirements=states, device=fields.pop("device", H100), **fields)


def test_selection_with_an_environment_does_no_io(forbid_io):
    reg = registry(decl("t-a", requirements=(NEEDS_PKG,)), decl("t-b"))
    forbid_io()
    sel = select_backend(BASE, registry=reg, environment=env(satisfied=True))
    assert_selected(sel, "t-a", device=H100, planning=False)


def test_the_environment_decides_packages_device_and_override():
    reg = registry(decl("t-a", requirements=(NEEDS_PKG,)), decl("t-b", priority={QuantFamily.UNQUANTIZED: 10}))
    missing = select_backend(BASE, registry=reg, environment=env(satisfied=False))
    assert_selected(missing, "t-b")
    (rejection,) = missing.rejections
    assert [r.code for r in rejection.reasons] == [ReasonCode.PACKAGE_MISSING]
    assert "fancy_kernels is not installed" in rejection.reasons[0].actual
    # A named device is checked against the given environment's software, not planned for.
    named = select_backend(BASE, "b200", registry=reg, environment=env(satisfied=False))
    assert_selected(named, "t-b", device=get_device("b200"), planning=False)
    # The environment's device is the target; an SM70 device rejects both (declared from SM75).
    with pytest.raises(NoEligibleBackend):
        select_backend(BASE, registry=reg, environment=env(satisfied=True, device=get_device("sm70")))
    forced = select_backend(BASE, registry=reg, environment=env(satisfied=True, backend_override="t-b"))
    assert_selected(forced, "t-b", decided_by="env")


def test_an_environment_without_a_device_needs_a_named_one():
    reg = registry(decl("t-a"))
    with pytest.raises(InvalidDevice, match=r"^this environment names no device \(a planning environment\): pass device=$"):
        select_backend(BASE, registry=reg, environment=Environment.planning_target())
    sel = select_backend(BASE, "h100", registry=reg, environment=Environment.planning_target())
    assert_selected(sel, "t-a", planning=True)


def test_a_passed_environment_and_the_detected_one_give_the_same_fingerprint(monkeypatch):
    monkeypatch.setenv("MOE_REGISTRY_DEVICE", "h100")
    monkeypatch.delenv("MOE_REGISTRY_BACKEND", raising=False)
    from moe_registry.environment import detect_device

    detect_device.cache_clear()
    try:
        reg = registry(decl("t-a"))
        detected = select_backend(BASE, registry=reg)
        passed = select_backend(BASE, registry=reg, environment=this_machine(reg.environment()))
    finally:
        detect_device.cache_clear()
    assert detected == passed and detected.device == H100


def test_not_an_environment_is_a_typed_error():
    from moe_registry.errors import InvalidArgument

    with pytest.raises(InvalidArgument, match="^environment must be an Environment, got dict$"):
        select_backend(BASE, registry=registry(decl("t-a")), environment={"planning": False})
    with pytest.raises(PlanError, match="^environment must be an Environment, got dict$"):
        plan_model("qwen3-30b-a3b", environment={"planning": False})


def test_plan_model_takes_the_environment_device(forbid_io):
    from moe_registry.registry import default_registry

    default_registry()  # built (entry points read) before I/O is forbidden
    forbid_io()
    plan = plan_model("qwen3-30b-a3b", environment=Environment(planning=False, device=H100))
    assert plan.layers and all(p.selection is not None and p.selection.device == H100 for p in plan.layers)
    with pytest.raises(PlanError, match="^a planning environment names no device: pass device=$"):
        plan_model("qwen3-30b-a3b", environment=Environment.planning_target())


def test_assert_selected_fails_with_the_selection_described():
    sel = select_backend(BASE, "h100", registry=registry(decl("t-a")))
    with pytest.raises(AssertionError) as failure:
        assert_selected(sel, "t-b")
    assert sel.describe() in str(failure.value) and "'backend': 't-a'" in str(failure.value)


def test_plan_config_takes_the_environment_device(forbid_io):
    import json

    from moe_registry.models import preset_text
    from moe_registry.planner import plan_config
    from moe_registry.registry import default_registry

    config = {k: v for k, v in json.loads(preset_text("qwen3-30b-a3b")).items() if not k.startswith("_")}
    default_registry()
    forbid_io()
    b200 = get_device("b200")
    plan = plan_config(config, environment=Environment(planning=False, device=b200))
    assert plan.layers and all(p.selection is not None and p.selection.device == b200 for p in plan.layers)


def test_a_forced_backend_wins_over_the_environments_override():
    reg = registry(decl("t-a"), decl("t-b", priority={QuantFamily.UNQUANTIZED: 10}))
    forced = select_backend(BASE, registry=reg, force="t-a", environment=env(satisfied=True, backend_override="t-b"))
    assert_selected(forced, "t-a", decided_by="forced")


def test_a_torch_device_target_is_the_environments_gpu():
    torch = pytest.importorskip("torch")
    reg = registry(decl("t-a"))
    on_gpu = select_backend(BASE, torch.device("cuda"), registry=reg, environment=env(satisfied=True))
    assert on_gpu.device == H100
    for device in (None, get_device("cpu")):
        with pytest.raises(InvalidDevice, match=r"^cuda requested but this machine has no CUDA device$"):
            select_backend(BASE, torch.device("cuda"), registry=reg,
                           environment=Environment(planning=False, device=device))


def test_the_fingerprint_ignores_the_environments_gpu_and_override_when_a_device_is_named():
    # What decides a selection is in the fingerprint; the machine's own GPU (a named target replaces it) and
    # the override (recorded as decided_by) are not, so a plan made on a laptop and on the GPU host agree.
    reg = registry(decl("t-a"))
    here = select_backend(BASE, "h100", registry=reg, environment=env(satisfied=True))
    elsewhere = select_backend(BASE, "h100", registry=reg, environment=env(satisfied=True, device=get_device("b200")))
    assert here.fingerprint == elsewhere.fingerprint
    overridden = select_backend(BASE, "h100", registry=reg, force="t-a",
                                environment=env(satisfied=True, backend_override="t-a"))
    forced = select_backend(BASE, "h100", registry=reg, force="t-a", environment=env(satisfied=True))
    assert overridden.fingerprint == forced.fingerprint
