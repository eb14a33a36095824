"""`moe-registry probe`: check every declaration against the real kernels on this machine.

For each backend available here (a device rule matches and its requirements are met), every
combination of activation x quantization scheme x shape class is run, the declared ones *and* the
undeclared ones, and compared with an oracle; then the feature axes, expert biases and router
weight on the input (``grid.FEATURE_COMBOS``), for every scheme on the first shape class and
gpt-oss's H=I=2880 (the case that would have caught Marlin declaring no biases while running them).
Whether a combination is declared is decided by the declarations alone, through
``selection.judge`` (no reasons = declared): the probe restates no support fact. What it reports:

- per combination: ``passed`` (relative error), ``wrong`` (error vs tolerance, or NaN/inf),
  ``raised`` (exception type and one line), ``skipped`` (why);
- drift: *declared but failing* (declared, and wrong or raised) and *undeclared but working*
  (undeclared, and passed; with the reason codes that made it undeclared);
- format findings: undeclared only because of selection's format-wide scale-group rule (not a
  backend's declaration), yet working.

Isolation: each backend runs in a subprocess worker (``python -m moe_registry.verify.worker``) that
streams one JSON line per result. A worker that dies (segfault, abort, a poisoned CUDA context)
costs only the combination in flight, recorded as "raised: worker crashed (...)"; a fresh worker
continues at the next one. ``isolate=False`` (``--in-process``) runs everything here, for debugging.

The record (``--out``) is a ``ProbeRecord``: the machine (card, smNN, driver, versions; no host
name), the registry digest, every result with its declared flag and reason codes, and the drift.
``record.verification_summary`` and ``moe_registry.provenance.apply_verification`` turn a committed
record into provenance for the declarations (``Sourced.verified_on``, ``BackendCapability.hardware``).

One module per job:

- ``grid``: shape classes, default schemes, the combinations of one backend (pure: declarations only)
- ``oracle``: tolerances, the float64 oracle and the output comparison (torch only when called)
- ``record``: the pydantic record, load / save, drift grouping and the verification summary
- ``worker``: the worker protocol and its ``python -m`` entry (imports torch)
- ``supervisor``: subprocess workers, restarts after crashes, CUDA errors and timeouts
- ``probe``: ``run_probe`` (availability, planning, running, drift, machine facts)
- ``report``: the tables, the JSON output and the CLI command's exit code

This package's ``__init__`` imports nothing, so that reading a record (``record``) or the grid
loads no subprocess or torch code; only ``worker`` imports torch, and only ``supervisor`` spawns.
"""
