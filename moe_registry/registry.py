"""The registry: a thin, typed layer over a pluggy PluginManager.

Built-in backends and third-party plugins contribute declarations through the same hook; plugins
are found through the ``moe_registry`` entry-point group. A plugin that fails to load, raises,
returns something that is not a valid declaration, reuses an id, prints, exits, hangs or leaves
handlers behind is isolated and reported in ``Registry.problems``; every other backend keeps
working.

An entry-point plugin is third-party code and its declarations are data, so it is evaluated out of
process (:func:`moe_registry._isolation.run_in_child`): its import and hook run in a child Python
process under one time budget (``$MOE_REGISTRY_PLUGIN_TIMEOUT``, default 1 s), and the validated
declarations (JSON), with the problems found, are cached by distribution name, version and file
modification times (``$XDG_CACHE_HOME/moe-registry``, else ``~/.cache/moe-registry``): the common
path imports no plugin code at all. Its requirement probes run in a child too, when this machine's
environment is first asked for. Plugin objects handed to ``Registry(plugins=...)`` run in process,
guarded (:func:`moe_registry._isolation.guarded_call`). A plugin contributes at most
``MAX_DECLARATIONS_PER_PLUGIN`` declarations.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import inspect
import sys
from collections.abc import Mapping
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal

import pluggy
from pydantic import BaseModel, ConfigDict, ValidationError

from . import cache
from .cache import stat_line
from .environment import Environment, find_module_spec, probe_environment, this_machine
from .errors import InvalidArgument, UnknownBackend, one_line
from .schemas.capability import BackendCapability

# ._isolation (subprocess, signals, threads: ~3 ms to import) runs third-party code, so it is
# imported where a plugin is evaluated: the built-ins alone, the usual `explain`, never load it.
if TYPE_CHECKING:
    from ._isolation import ChildOutcome

PROJECT = "moe_registry"
# Real plugins declare a handful of backends; thousands would make every command slow (issue 13).
MAX_DECLARATIONS_PER_PLUGIN = 64
ENTRY_POINT_GROUP = "moe_registry"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

# Built-in backends, registered exactly as a plugin would be (each module has a hookimpl).
BUILTIN_BACKENDS = (
    "moe_registry.backends.trtllm_gen",
    "moe_registry.backends.flashinfer_cutlass",
    "moe_registry.backends.marlin",
    "moe_registry.backends.humming",
    "moe_registry.backends.oai_triton",
    "moe_registry.backends.triton_fused_moe",
    "moe_registry.backends.triton_lowt_moe",
    "moe_registry.backends.torch_grouped_mm",
    "moe_registry.backends.reference",
)


class BackendSpec:
    """Hook specifications a backend plugin implements (plain functions, any subset)."""

    @hookspec
    def moe_registry_backends(self) -> "list[BackendCapability | dict[str, Any]]":
        """Return the declarations this plugin contributes: BackendCapability objects, or dicts
        that validate as one. A declaration's ``adapter`` ("module:Class") names the class that
        runs its kernel; it is imported only when a layer is built."""
        raise NotImplementedError


Stage = Literal["load", "register", "call", "validate", "duplicate", "output", "side_effect", "probe"]
_STAGES = frozenset(Stage.__args__)  # type: ignore[attr-defined]


class PluginProblem(BaseModel):
    # Built when first used, not at import: `explain` makes one only when a plugin fails.
    model_config = ConfigDict(frozen=True, extra="forbid", defer_build=True)

    plugin: str
    stage: Stage
    message: str


class Registry:
    """All declarations visible to selection, in registration order (built-ins first)."""

    def __init__(self, *, builtins: bool = True, entry_points: bool = True, plugins: Iterable[object] = ()):
        self.problems: list[PluginProblem] = []
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(BackendSpec)
        self._order: list[str] = []
        self._outside: dict[str, str] = {}  # backend id -> the entry-point plugin that declared it
        if builtins:
            for module in BUILTIN_BACKENDS:
                self._register(_BuiltinHooks(importlib.import_module(module)), module)
        if entry_points:
            self._load_entry_points()
        for plugin in plugins:
            self._register(plugin, getattr(plugin, "__name__", None) or type(plugin).__name__)
        self._declarations = self._collect()
        self._environment: Environment | None = None
        self.digest = hashlib.sha256(
            "\n".join(d.model_dump_json() for d in self._declarations.values()).encode()).hexdigest()[:16]

    # --- Building ------------------------------------------------------------------------------

    def _register(self, plugin: object, name: str) -> None:
        try:
            self._pm.register(plugin, name=name)
        except (Exception, SystemExit) as exc:  # pluggy validates hookimpls; a module __getattr__ may exit
            self.problems.append(PluginProblem(plugin=name, stage="register", message=one_line(exc)))
            return
        self._order.append(name)

    def _load_entry_points(self) -> None:
        entries = list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))
        answers: dict[int, _Evaluated] = {}
        keys = {index: _plugin_key(entry) for index, entry in enumerate(entries)}
        for index, key in keys.items():
            cached = _cache_read(key) if key is not None else None
            if cached is not None:
                answers[index] = cached
        pending = [index for index in range(len(entries)) if index not in answers]
        requests = [{"name": entries[i].name, "value": entries[i].value} for i in pending]
        outcomes: list[ChildOutcome] = []
        if pending:
            from ._isolation import run_children

            outcomes = run_children("moe_registry.registry", requests)
        for index, outcome in zip(pending, outcomes):
            answers[index] = _evaluated(outcome)
            key = keys[index]
            if key is not None:
                _cache_write(key, answers[index])
        for index, entry in enumerate(entries):
            name = f"{entry.name} ({entry.value})"
            declarations, problems = answers[index]
            self.problems.extend(PluginProblem(plugin=name, stage=stage, message=message)  # type: ignore[arg-type]
                                 for stage, message in problems)
            if declarations is not None:
                self._outside.update((d.id, name) for d in declarations)
                self._register(_FixedDeclarations(declarations), name)

    def _report_output(self, name: str, when: str, output: str) -> None:
        if output.strip():
            from ._isolation import quote_output

            self.problems.append(PluginProblem(
                plugin=name, stage="output", message=f"wrote to stdout/stderr at {when} (captured): {quote_output(output)}"))

    def _collect(self) -> dict[str, BackendCapability]:
        impls = {impl.plugin_name: impl for impl in self._pm.hook.moe_registry_backends.get_hookimpls()}
        found: dict[str, BackendCapability] = {}
        for name in self._order:
            impl = impls.get(name)
            if impl is None:
                continue
            # The whole call runs guarded: the loop over a returned generator and the validation of
            # every item too (a dict or model subclass can run plugin code when read). Our own
            # backends and with_declaration's fixed list need no thread.
            collect = lambda f=impl.function: [_validated(item) for item in _materialise(f())]  # noqa: E731
            if name in BUILTIN_BACKENDS or isinstance(impl.plugin, _FixedDeclarations):
                items = collect()
            else:
                from ._isolation import guarded_call

                outcome = guarded_call(collect)
                self._report_output(name, "hook call", outcome.output)
                if outcome.error is not None:  # isolate: one plugin's bug must not hide the others
                    self.problems.append(PluginProblem(plugin=name, stage="call", message=outcome.error))
                    continue
                items = outcome.value
            if len(items) > MAX_DECLARATIONS_PER_PLUGIN:
                self.problems.append(PluginProblem(plugin=name, stage="validate", message=(
                    f"returned more than {MAX_DECLARATIONS_PER_PLUGIN} declarations; a plugin may contribute at most "
                    f"{MAX_DECLARATIONS_PER_PLUGIN}; all ignored")))
                continue
            for decl in items:
                if isinstance(decl, str):  # the validation error
                    self.problems.append(PluginProblem(plugin=name, stage="validate", message=decl))
                    continue
                if decl.id in found:
                    self.problems.append(PluginProblem(
                        plugin=name, stage="duplicate", message=f"backend id {decl.id!r} is already declared; ignored"))
                    continue
                found[decl.id] = decl
        return found

    # --- Access --------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[BackendCapability]:
        return iter(self._declarations.values())

    def __len__(self) -> int:
        return len(self._declarations)

    def ids(self) -> list[str]:
        return list(self._declarations)

    def get(self, backend: str) -> BackendCapability:
        if not isinstance(backend, str):
            raise InvalidArgument(f"a backend id is a str, got {type(backend).__name__}")
        try:
            return self._declarations[backend]
        except KeyError:
            raise UnknownBackend(backend, self.ids()) from None

    def declarations(self) -> tuple[BackendCapability, ...]:
        return tuple(self._declarations.values())

    def with_declaration(self, declaration: BackendCapability) -> "Registry":
        """This registry with one declaration added, or replacing the one with its id: the way to
        ask "what would change if this backend declared X?" (the rest stays identical)."""
        if not isinstance(declaration, BackendCapability):
            raise InvalidArgument(f"with_declaration needs a BackendCapability, got {type(declaration).__name__}")
        replaced = [declaration if d.id == declaration.id else d for d in self._declarations.values()]
        if declaration.id not in self._declarations:
            replaced.append(declaration)

        return Registry(builtins=False, entry_points=False, plugins=[_FixedDeclarations(replaced)])

    def environment(self) -> Environment:
        """This machine's software for these declarations (probed once, then cached)."""
        if self._environment is None:
            failures: list[tuple[str, str]] = []
            outside = {i: who for i, who in self._outside.items() if i in self._declarations}
            self._environment = probe_environment(self._declarations.values(), failures=failures, outside=outside)
            self.problems.extend(PluginProblem(plugin=who, stage="probe", message=what) for who, what in failures)
        return self._environment

    def refresh_environment(self) -> None:
        self._environment = None

    def detect_environment(self) -> Environment:
        """This machine as ``select_backend(device=None)`` sees it: :meth:`environment` plus the
        accelerator and ``$MOE_REGISTRY_BACKEND`` (read now). Pass it, or a copy with changes, as
        ``select_backend(..., environment=...)``."""
        return this_machine(self.environment())


_HOOK_NAMES = tuple(name for name, spec in vars(BackendSpec).items() if hasattr(spec, f"{PROJECT}_spec"))


class _BuiltinHooks:
    """A built-in backend module's hook implementations, registered in the module's place: pluggy
    looks at every attribute of what it registers (``dir`` and one parse per name), and a module has
    dozens (its imports, constants, classes); this object has only the hooks the module defines."""

    def __init__(self, module: ModuleType):
        for name in _HOOK_NAMES:
            if hasattr(module, name):
                setattr(self, name, getattr(module, name))

    def __dir__(self) -> list[str]:
        return list(vars(self))


class _FixedDeclarations:
    """A plugin that contributes declarations already validated (``Registry.with_declaration``)."""

    def __init__(self, declarations: list[BackendCapability]):
        self.declarations = declarations

    @hookimpl
    def moe_registry_backends(self) -> list[BackendCapability]:
        return self.declarations


def _validated(item: Any) -> "BackendCapability | str":
    """A declaration of exactly BackendCapability (revalidated from plain data otherwise), or the
    one-line validation error."""
    try:
        if type(item) is BackendCapability:
            return item
        if isinstance(item, BaseModel):
            item = item.model_dump()
        return BackendCapability.model_validate(item)
    except (ValidationError, ValueError, TypeError) as exc:
        return one_line(exc)


def _materialise(contributed: Any) -> list[Any]:
    """A hook's result as a list: a list, tuple or generator of declarations, or None."""
    if contributed is None:
        return []
    if isinstance(contributed, (list, tuple)) or inspect.isgenerator(contributed):
        items = []
        for item in contributed:
            items.append(item)
            if len(items) > MAX_DECLARATIONS_PER_PLUGIN:  # an endless generator stops here
                break
        return items
    raise TypeError(f"the hook returned {type(contributed).__name__}; expected a list of declarations")


@functools.lru_cache(maxsize=1)
def default_registry() -> Registry:
    """The process-wide registry: built-ins plus installed entry-point plugins."""
    return Registry()


# --- Entry-point plugins, out of process -----------------------------------------------------------

# (validated declarations, or None when the plugin contributes none; [(stage, message)] problems)
_Evaluated = tuple["list[BackendCapability] | None", list[tuple[str, str]]]


def _evaluate_in_child(request: dict[str, Any], say: Callable[[Any], None]) -> dict[str, Any]:
    """In the child (``python -m moe_registry.registry``): load one entry point, call its hook and
    validate what it returns; plugin code runs here only."""
    entry = importlib.metadata.EntryPoint(name=str(request["name"]), value=str(request["value"]),
                                          group=ENTRY_POINT_GROUP)
    plugin = entry.load()
    say({"stage": "loaded"})
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(BackendSpec)
    try:
        pm.register(plugin, name=entry.name)
    except BaseException as exc:  # noqa: BLE001 - pluggy validates hookimpls; a module __getattr__ may exit
        return {"register_error": one_line(exc)}
    say({"stage": "called"})
    declarations: list[Any] = []
    invalid: list[str] = []
    for impl in pm.hook.moe_registry_backends.get_hookimpls():
        items = _materialise(impl.function())
        if len(items) > MAX_DECLARATIONS_PER_PLUGIN:
            return {"too_many": True}
        for item in items:
            decl = _validated(item)
            if isinstance(decl, str):
                invalid.append(decl)
            else:
                declarations.append(decl.model_dump(mode="json"))
    return {"declarations": declarations, "invalid": invalid}


def _evaluated(outcome: ChildOutcome) -> _Evaluated:
    """A child's answer as validated declarations (validated again here: the child ran plugin
    code) and problems."""
    from ._isolation import quote_output

    problems: list[tuple[str, str]] = []
    if outcome.output.strip():
        problems.append(("output", f"wrote to stdout/stderr (captured): {quote_output(outcome.output)}"))
    problems.extend(("side_effect", effect) for effect in outcome.side_effects)
    if outcome.error is not None:
        problems.append(("load" if outcome.stage in ("start", "ready") else "call", outcome.error))
        return None, problems
    result = outcome.result if isinstance(outcome.result, Mapping) else {}
    if isinstance(result.get("register_error"), str):
        problems.append(("register", result["register_error"]))
        return None, problems
    if result.get("too_many"):
        problems.append(("validate", f"returned more than {MAX_DECLARATIONS_PER_PLUGIN} declarations; a plugin may "
                                     f"contribute at most {MAX_DECLARATIONS_PER_PLUGIN}; all ignored"))
        return None, problems
    invalid = result.get("invalid")
    problems.extend(("validate", str(message)) for message in (invalid if isinstance(invalid, list) else []))
    raw = result.get("declarations")
    raw = raw if isinstance(raw, list) else []
    declarations = []
    for item in raw[:MAX_DECLARATIONS_PER_PLUGIN]:
        decl = _validated(item if isinstance(item, Mapping) else None)
        if isinstance(decl, str):
            problems.append(("validate", decl))
        else:
            declarations.append(decl)
    return declarations, problems


CACHE_FORMAT = 1  # of the evaluated plugin's entry (the cache's own format is moe_registry.cache.FORMAT)
MAX_KEY_FILES = 4096  # files of one distribution whose modification times make the cache key


def _plugin_key(entry: importlib.metadata.EntryPoint) -> str | None:
    """What a plugin's evaluation depends on: this package's and Python's versions, the time budget,
    the entry point, its distribution's name and version, and the modification times of the
    distribution's files and of the entry point's module. None: do not cache."""
    from . import __version__
    from ._isolation import plugin_timeout

    parts = [f"format {CACHE_FORMAT}", f"moe-registry {__version__}", sys.version, f"budget {plugin_timeout():g}",
             f"entry {entry.name} = {entry.value}"]
    dist = getattr(entry, "dist", None)
    try:
        if dist is not None:
            parts.append(f"dist {dist.metadata['Name']} {dist.version}")
            located = getattr(dist, "_path", None)
            if located is not None:
                parts.append(stat_line(located))
            parts.extend(stat_line(f.locate()) for f in (dist.files or [])[:MAX_KEY_FILES])
        module = entry.value.split(":")[0].strip()
        spec = find_module_spec(module)
        top = find_module_spec(module.split(".")[0])
        for found in (spec, top):
            if found is not None and found.origin:
                parts.append(stat_line(found.origin))
    except Exception:  # noqa: BLE001 - odd metadata: evaluate the plugin every time instead
        return None
    return "\n".join(parts)


def _cache_read(key: str) -> _Evaluated | None:
    """The cached evaluation for ``key``; None when absent or not an evaluation (it is then
    evaluated again and rewritten)."""
    data = cache.read("plugin", key)
    if not isinstance(data, dict):
        return None
    try:
        problems = [(str(stage), str(message)) for stage, message in data["problems"] if stage in _STAGES]
        raw = data["declarations"]
        if raw is None:
            return None, problems
        return [BackendCapability.model_validate(item) for item in raw], problems
    except (ValueError, TypeError, KeyError, RecursionError):
        return None


def _cache_write(key: str, evaluated: _Evaluated) -> None:
    declarations, problems = evaluated
    cache.write("plugin", key, {"problems": [list(p) for p in problems], "declarations": None if declarations is None
                                else [d.model_dump(mode="json") for d in declarations]})


if __name__ == "__main__":  # a child evaluating one entry-point plugin (Registry._load_entry_points)
    from ._isolation import child_main

    child_main(_evaluate_in_child)
