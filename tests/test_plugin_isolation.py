"""No plugin can take the registry down (issue 13): every fault below is a real installed
distribution found through its entry point, installed beside a healthy plugin that must survive."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from moe_registry.registry import MAX_DECLARATIONS_PER_PLUGIN, Registry

REPO = Path(__file__).resolve().parents[1]

HEALTHY = '''
from moe_registry.backends.reference import DECLARATION as REFERENCE
from moe_registry.registry import hookimpl

@hookimpl
def moe_registry_backends():
    return [REFERENCE.model_dump() | {"id": "acme-healthy", "name": "ACME healthy"}]
'''


def _hook(body: str, prelude: str = "") -> str:
    return (f"from moe_registry.registry import hookimpl\n{prelude}\n@hookimpl\n"
            f"def moe_registry_backends():\n" + textwrap.indent(textwrap.dedent(body), "    "))


FAULTS = {
    "returns_int": (_hook("return 5"), "call", "the hook returned int"),
    "returns_true": (_hook("return True"), "call", "the hook returned bool"),
    "generator_raises": (_hook('''
        from moe_registry.backends.reference import DECLARATION as REFERENCE
        yield REFERENCE.model_dump() | {"id": "acme-gen", "name": "gen"}
        raise RuntimeError("half-way")
        '''), "call", "RuntimeError: half-way"),
    "exit_at_import": ("import sys\nsys.exit(4)\n", "load", "SystemExit: 4"),
    "systemexit_in_hook": (_hook("raise SystemExit(3)"), "call", "SystemExit: 3"),
    "keyboard_interrupt_in_hook": (_hook("raise KeyboardInterrupt"), "call", "KeyboardInterrupt"),
    "prints_at_import": ('import sys\nprint("hello from import")\nprint("err", file=sys.stderr)\n' + _hook("return []"),
                         "output", "hello from import"),
    "prints_in_hook": (_hook('print("hello from hook")\nreturn []'), "output", "hello from hook"),
    "sleeps_in_hook": (_hook("import time\ntime.sleep(30)\nreturn []"), "call", "timed out after 0.5 s"),
    "sleeps_at_import": ("import time\ntime.sleep(30)\n", "load", "timed out after 0.5 s"),
    "too_many": (_hook('''
        from moe_registry.backends.reference import DECLARATION as REFERENCE
        base = REFERENCE.model_dump()
        return [base | {"id": f"acme-{i}", "name": "n"} for i in range(10_000)]
        '''), "validate", f"at most {MAX_DECLARATIONS_PER_PLUGIN}"),
    "endless_generator": (_hook('''
        from moe_registry.backends.reference import DECLARATION as REFERENCE
        base, i = REFERENCE.model_dump(), 0
        while True:
            i += 1
            yield base | {"id": f"acme-{i}", "name": "n"}
        '''), "validate", f"at most {MAX_DECLARATIONS_PER_PLUGIN}"),
    "model_subclass_exits_when_read": (_hook('''
        from moe_registry.backends.reference import DECLARATION as REFERENCE
        from moe_registry.schemas.capability import BackendCapability

        class Sneaky(BackendCapability):
            def model_dump(self, **kwargs):
                raise SystemExit(9)

        return [Sneaky.model_validate(REFERENCE.model_dump() | {"id": "acme-sneaky"})]
        '''), "call", "SystemExit: 9"),
    "adapter_module_missing": (_hook('''
        from moe_registry.backends.reference import DECLARATION as REFERENCE
        return [REFERENCE.model_dump() | {"id": "acme-noadapter", "name": "n", "adapter": "acme_gone:Experts"}]
        '''), None, None),
}


def _install(root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]) -> None:
    dist = root / f"{name}-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    lines = "\n".join(f"{key} = {value}" for key, value in entry_points.items())
    (dist / "entry_points.txt").write_text(f"[moe_registry]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(source)


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_REGISTRY_PLUGIN_TIMEOUT", "0.5")

    def install(fault: str) -> Path:
        _install(tmp_path, "acme_moe", {"healthy": "acme_healthy", "faulty": f"acme_{fault}"},
                 {"acme_healthy": HEALTHY, f"acme_{fault}": FAULTS[fault][0]})
        monkeypatch.syspath_prepend(str(tmp_path))
        return tmp_path

    yield install
    for name in [m for m in sys.modules if m.startswith("acme_")]:
        sys.modules.pop(name, None)


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_a_faulty_plugin_is_reported_and_the_healthy_one_survives(plugin_env, fault, capsys):
    plugin_env(fault)
    stdout = sys.stdout
    started = time.monotonic()
    registry = Registry()
    assert time.monotonic() - started < 10  # the sleeping plugins are abandoned after 0.5 s
    if "sleeps" not in fault:  # the capture is undone (an abandoned call keeps it, to drop its output)
        assert sys.stdout is stdout
    assert "acme-healthy" in registry.ids()
    assert "trtllm-fp4" in registry.ids()
    _, stage, message = FAULTS[fault]
    faulty = [p for p in registry.problems if p.plugin.startswith("faulty")]
    if stage is None:  # declared fine; the missing adapter fails only when a layer is built
        assert faulty == []
    else:
        assert any(p.stage == stage and message in p.message for p in faulty), registry.problems
        assert not any(p.plugin.startswith("healthy") for p in registry.problems)
    # Nothing the plugin printed reached the real stdout/stderr.
    out, err = capsys.readouterr()
    assert "hello" not in out + err and "err" not in out


def _cli(args: list[str], root: Path, **env: str) -> subprocess.CompletedProcess:
    environ = {**os.environ, "PYTHONPATH": f"{root}{os.pathsep}{REPO}", "MOE_REGISTRY_PLUGIN_TIMEOUT": "0.5", **env}
    return subprocess.run([sys.executable, "-m", "moe_registry.cli", *args], capture_output=True, text=True,
                          env=environ, timeout=120)


def _strict(text: str):
    def refuse(constant: str):
        raise ValueError(f"non-standard JSON constant {constant}")
    return json.loads(text, parse_constant=refuse)


def test_cli_json_stays_valid_with_a_printing_exiting_plugin(tmp_path):
    modules = {"acme_healthy": HEALTHY, "acme_prints": FAULTS["prints_at_import"][0],
               "acme_exits": FAULTS["systemexit_in_hook"][0]}
    _install(tmp_path, "acme_moe", {"healthy": "acme_healthy", "prints": "acme_prints", "exits": "acme_exits"}, modules)
    done = _cli(["backends", "--json"], tmp_path)
    assert done.returncode == 0, done.stderr
    data = _strict(done.stdout)
    assert "acme-healthy" in [b["id"] for b in data["backends"]]
    assert {(p["plugin"].split()[0], p["stage"]) for p in data["problems"]} >= {("prints", "output"), ("exits", "call")}
    assert done.stderr == ""


PROBE_PLUGIN = '''
from moe_registry.backends.reference import DECLARATION as REFERENCE
from moe_registry.registry import hookimpl

def exits():
    print("probe chatter")
    raise SystemExit(3)

def sleeps():
    import time
    time.sleep(30)
    return True, "never"

@hookimpl
def moe_registry_backends():
    reqs = [{"kind": "jit_module", "name": "acme_exit", "probe": "acme_probe_plugin:exits", "source": "test"},
            {"kind": "jit_module", "name": "acme_sleep", "probe": "acme_probe_plugin:sleeps", "source": "test"}]
    return [REFERENCE.model_dump() | {"id": "acme-probed", "name": "ACME probed", "requirements": reqs}]
'''


def test_requirement_probe_that_exits_or_sleeps_is_reported_and_json_stays_valid(tmp_path):
    _install(tmp_path, "acme_probe", {"probed": "acme_probe_plugin"}, {"acme_probe_plugin": PROBE_PLUGIN})
    started = time.monotonic()
    done = _cli(["select", "--experts", "8", "--top-k", "2", "--hidden", "128", "--intermediate", "128",
                 "--json"], tmp_path)
    assert time.monotonic() - started < 60
    assert done.returncode == 0, done.stderr
    data = _strict(done.stdout)
    rejected = {r["backend"]: r for r in data["rejections"]}
    assert "acme-probed" in rejected  # its requirements are unmet: a rejection, not a crash
    assert "probe chatter" not in done.stdout


def test_requirement_probe_problems_reach_registry_problems(tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_REGISTRY_PLUGIN_TIMEOUT", "0.5")
    _install(tmp_path, "acme_probe", {"probed": "acme_probe_plugin"}, {"acme_probe_plugin": PROBE_PLUGIN})
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        registry = Registry()
        env = registry.environment()
        states = {s.name: s for s in env.requirements if s.backend == "acme-probed"}
        assert not states["acme_exit"].satisfied and "SystemExit: 3" in states["acme_exit"].detail
        assert not states["acme_sleep"].satisfied and "timed out" in states["acme_sleep"].detail
        probe_problems = [p for p in registry.problems if p.stage == "probe"]
        assert any("SystemExit: 3" in p.message for p in probe_problems)
        assert any("probe chatter" in p.message for p in probe_problems)
        assert any("timed out" in p.message for p in probe_problems)
    finally:
        sys.modules.pop("acme_probe_plugin", None)
