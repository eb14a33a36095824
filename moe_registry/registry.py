"""The registry: a thin, typed layer over a pluggy PluginManager.

Built-in backends and third-party plugins contribute declarations through the same hook; plugins
are found through the ``moe_registry`` entry-point group. A plugin that fails to load, raises,
returns something that is not a valid declaration, or reuses an id is isolated and reported in
``Registry.problems``; every other backend keeps working. Plugin code (import and hook) runs under
:func:`moe_registry._isolation.guarded_call`: ``SystemExit`` is caught too, output is captured, and
each call has a time limit (``$MOE_REGISTRY_PLUGIN_TIMEOUT``, default 5 s). A plugin contributes at
most ``MAX_DECLARATIONS_PER_PLUGIN`` declarations.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import inspect
from typing import Any, Iterable, Iterator, Literal

import pluggy
from pydantic import BaseModel, ConfigDict, ValidationError

from ._isolation import Outcome, guarded_call, quote_output
from .environment import Environment, probe_environment, this_machine
from .errors import UnknownBackend, one_line
from .schemas.capability import BackendCapability

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


class PluginProblem(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    plugin: str
    stage: Literal["load", "register", "call", "validate", "duplicate", "output", "probe"]
    message: str


class Registry:
    """All declarations visible to selection, in registration order (built-ins first)."""

    def __init__(self, *, builtins: bool = True, entry_points: bool = True, plugins: Iterable[object] = ()):
        self.problems: list[PluginProblem] = []
        self._pm = pluggy.PluginManager(PROJECT)
        self._pm.add_hookspecs(BackendSpec)
        self._order: list[str] = []
        if builtins:
            for module in BUILTIN_BACKENDS:
                self._register(importlib.import_module(module), module)
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
        for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
            name = f"{entry.name} ({entry.value})"
            outcome = guarded_call(entry.load)
            self._report_output(name, "load", outcome.output)
            if outcome.error is not None:
                self.problems.append(PluginProblem(plugin=name, stage="load", message=outcome.error))
                continue
            self._register(outcome.value, name)

    def _report_output(self, name: str, when: str, output: str) -> None:
        if output.strip():
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
                outcome = Outcome(value=collect())
            else:
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
        try:
            return self._declarations[backend]
        except KeyError:
            raise UnknownBackend(backend, self.ids()) from None

    def declarations(self) -> tuple[BackendCapability, ...]:
        return tuple(self._declarations.values())

    def with_declaration(self, declaration: BackendCapability) -> "Registry":
        """This registry with one declaration added, or replacing the one with its id: the way to
        ask "what would change if this backend declared X?" (the rest stays identical)."""
        replaced = [declaration if d.id == declaration.id else d for d in self._declarations.values()]
        if declaration.id not in self._declarations:
            replaced.append(declaration)

        return Registry(builtins=False, entry_points=False, plugins=[_FixedDeclarations(replaced)])

    def environment(self) -> Environment:
        """This machine's software for these declarations (probed once, then cached)."""
        if self._environment is None:
            failures: list[tuple[str, str]] = []
            self._environment = probe_environment(self._declarations.values(), failures=failures)
            self.problems.extend(PluginProblem(plugin=who, stage="probe", message=what) for who, what in failures)
        return self._environment

    def refresh_environment(self) -> None:
        self._environment = None

    def detect_environment(self) -> Environment:
        """This machine as ``select_backend(device=None)`` sees it: :meth:`environment` plus the
        accelerator and ``$MOE_REGISTRY_BACKEND`` (read now). Pass it, or a copy with changes, as
        ``select_backend(..., environment=...)``."""
        return this_machine(self.environment())


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
