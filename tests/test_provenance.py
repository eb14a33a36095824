"""`moe-registry backends` prints provenance (what was verified on hardware, by which record) through
``moe_registry.provenance``, which imports only the schemas: rendering a declaration must load
neither the probe's subprocess supervisor and worker nor torch. Each check runs in a fresh
interpreter, so modules imported by other tests do not hide an import."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# The probe's modules that spawn or are spawned (and what imports them): none may be loaded by rendering.
SPAWNING = ("moe_registry.verify.supervisor", "moe_registry.verify.worker", "moe_registry.verify.probe",
            "moe_registry.verify.report")

SCRIPT = """
import contextlib, io, json, sys
{setup}
print(json.dumps({{"out": out, "loaded": sorted(m for m in sys.modules if m.startswith("moe_registry")),
                  "torch": "torch" in sys.modules}}))
"""


def _run(setup: str) -> dict:
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(setup=setup)], capture_output=True, text=True,
                            cwd=ROOT, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def test_importing_render_loads_no_probe_code():
    got = _run("import moe_registry.render\nout = ''")
    assert "moe_registry.render" in got["loaded"]
    assert not set(SPAWNING) & set(got["loaded"]) and not got["torch"]


def test_backends_command_prints_provenance_without_the_probe():
    for args in (["backends"], ["backends", "--markdown"], ["backends", "--device", "h100"]):
        got = _run("from moe_registry.cli import main\nf = io.StringIO()\n"
                   f"with contextlib.redirect_stdout(f): rc = main({args!r})\nassert rc == 0\nout = f.getvalue()")
        # The provenance path ran: the H100 records the declarations cite are named in the output.
        assert "moe_registry.provenance" in got["loaded"], args
        assert "h100-probe.json" in got["out"] and "verified" in got["out"], args
        assert not set(SPAWNING) & set(got["loaded"]), (args, set(SPAWNING) & set(got["loaded"]))
        assert not got["torch"], args


def test_the_check_sees_the_supervisor_when_the_probe_is_imported():
    # The control: importing the probe does load the supervisor, so the checks above can fail.
    got = _run("import moe_registry.verify.probe\nout = ''")
    assert "moe_registry.verify.supervisor" in got["loaded"] and not got["torch"]
