"""Is a FlashInfer JIT module already built on this machine? (No torch, no flashinfer import.)

Importing this module imports neither torch nor flashinfer, so the environment probe (a
``jit_module`` requirement's ``probe``) can call :func:`fused_moe_module_status` during selection.

How FlashInfer 0.7.2.post1 finds a compiled module (``flashinfer/jit/core.py``
``JitSpec.build_and_load`` / ``JitSpecNvcc.try_load``; ``flashinfer/jit/env.py``):

1. AOT artifacts, returned without building: ``<flashinfer package>/data/aot/<name>/<name>.so``
   (``env.get_aot_artifacts``: this fallback path wins when it exists), then the
   ``flashinfer-jit-cache`` providers (``env._get_aot_providers``: a provider whose version matches
   flashinfer's, whose ``modules`` lists the module and whose ``cuda_architectures`` cover the
   device, file ``<provider.jit_cache_dir>/<name>/<name>.so``).
2. Otherwise, under a file lock: if ``FLASHINFER_DISABLE_JIT`` is set, ``MissingJITCacheError``
   (so that variable also refuses an already compiled *JIT-cache* module); else ``build()``
   writes ``build.ninja`` and **always runs ninja** in
   ``$FLASHINFER_WORKSPACE_BASE/.cache/flashinfer/<version>/<archs>/cached_ops/<name>/``
   (``FLASHINFER_WORKSPACE_BASE`` defaults to ``$HOME``; ``<archs>`` is
   ``"_".join(f"{major}{minor}" for sorted TARGET_CUDA_ARCHS)``, e.g. ``90a``, from
   ``FLASHINFER_CUDA_ARCH_LIST`` or every visible GPU, ``compilation_context.py``), then loads
   ``<name>.so``. ninja is a no-op only when every output exists, no input is newer and its
   ``.ninja_log`` / ``.ninja_deps`` record the same commands: a copied ``.so`` alone, or a build
   directory without its ninja log, is rebuilt from scratch.

So "built" here means: an AOT artifact exists, or the JIT-cache ``.so`` exists **and** ninja
(which FlashInfer runs on every load of a JIT-cache module, so it must be on PATH) reports no
work to do (``ninja -n``). The exact path checked is always part of the detail.

Module names (``fused_moe/core.py::get_cutlass_fused_moe_module`` and ``jit/fused_moe.py``):
SM89 ``fused_moe_89``; SM90 ``fused_moe_90`` (``fused_moe_90_h20_prebuilt_d`` on a 78-SM H20
unless ``FLASHINFER_DISABLE_JIT`` is set); SM100/107/110 ``fused_moe_100``; SM103
``fused_moe_103``; SM120/121 ``fused_moe_120``. TRT-LLM-gen: ``fused_moe_trtllm_sm100``
(``fused_moe_trtllm_sm107`` on SM107), ``core.py::get_trtllm_moe_sm100_module``.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Iterable

from ..environment import detect_device
from ..schemas.device import DeviceSpec

# --- Constants the declarations may quote ------------------------------------------------------

FLASHINFER_DISTRIBUTION = "flashinfer-python"
FLASHINFER_VERSION_WRITTEN_FOR = "0.7.2.post1"

#: Set to 1/true/yes to let an adapter trigger FlashInfer's first-use JIT build.
ALLOW_JIT_BUILD_ENV = "MOE_REGISTRY_FLASHINFER_ALLOW_JIT"

# get_cutlass_fused_moe_module: backend string -> module name suffix.
_CUTLASS_MODULE_BY_SM = {89: "89", 90: "90", 100: "100", 107: "100", 110: "100", 103: "103",
                         120: "120", 121: "120"}


def cutlass_module_name(sm: int, *, h20: bool = False) -> str | None:
    """The CUTLASS fused-MoE JIT module FlashInfer loads on SM ``sm`` (None: no module, FlashInfer
    raises ``ValueError("Invalid backend: ...")``)."""
    suffix = _CUTLASS_MODULE_BY_SM.get(sm)
    if suffix is None:
        return None
    if suffix == "90" and h20 and not os.environ.get("FLASHINFER_DISABLE_JIT"):
        return "fused_moe_90_h20_prebuilt_d"
    return f"fused_moe_{suffix}"


def trtllm_module_name(sm: int) -> str | None:
    """The TRT-LLM-gen MoE JIT module on SM ``sm`` (None below SM100 / on SM12x: no cubins)."""
    if sm // 10 != 10:
        return None
    return "fused_moe_trtllm_sm107" if sm == 107 else "fused_moe_trtllm_sm100"


def jit_build_allowed(flag: bool | None = None) -> bool:
    """An explicit flag wins; otherwise ``MOE_REGISTRY_FLASHINFER_ALLOW_JIT``."""
    if flag is not None:
        return bool(flag)
    return os.environ.get(ALLOW_JIT_BUILD_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def not_built_message(module: str, detail: str = "", *, build_cost: str) -> str:
    """The refusal an adapter raises instead of starting a long first-use build (``build_cost``:
    the first-build cost its declaration states)."""
    msg = (f"FlashInfer's {module} JIT module is not built; its first build takes {build_cost}; "
           f"prebuild it or install flashinfer-jit-cache (or pass allow_jit_build=True / set "
           f"{ALLOW_JIT_BUILD_ENV}=1 to build it now)")
    return f"{msg}. {detail}" if detail else msg


# --- FlashInfer's architecture naming (compilation_context.py, jit/_cuda_architecture.py) --------

def normalize_arch(major: int, minor: int, cuda_version: tuple[int, int] | None = None) -> list[tuple[int, str]]:
    """``CompilationContext._normalize_cuda_arch`` as a list of candidates: SM 9.x and 10+ get an
    ``a`` suffix; SM 12.0 gets ``f`` with CUDA >= 12.9, ``a`` with 12.8 (both when the CUDA
    version is unknown); SM 12.1+ ``a``; below 9 no suffix."""
    if major == 12 and minor == 0:
        if cuda_version is None:
            return [(12, "0f"), (12, "0a")]
        return [(12, "0f")] if cuda_version >= (12, 9) else [(12, "0a")]
    if major >= 9:
        return [(major, f"{minor}a")]
    return [(major, str(minor))]


def parse_arch_list(text: str, cuda_version: tuple[int, int] | None = None) -> set[tuple[int, str]]:
    """``FLASHINFER_CUDA_ARCH_LIST`` ("9.0a 10.0", space-separated) as FlashInfer reads it (an
    unsuffixed 12.0 takes the first candidate of ``normalize_arch``)."""
    archs: set[tuple[int, str]] = set()
    for item in text.split(" "):
        if not item:
            continue
        major_s, minor_s = item.split(".")
        major = int(major_s)
        if minor_s[-1].isalpha():
            archs.add((major, minor_s))
        else:
            archs.add(normalize_arch(major, int(minor_s), cuda_version)[0])
    return archs


def arch_dir_name(archs: Iterable[tuple[int, str]]) -> str:
    """``env._get_workspace_dir_name``: ``"_".join(f"{major}{minor}")`` over the sorted set."""
    return "_".join(f"{major}{minor}" for major, minor in sorted(set(archs)))


def _arch_tag(major: int, minor: str) -> str:
    return f"sm{major}{minor}"


def _compat_score(binary: str, device: str) -> tuple[int, int] | None:
    """``_cuda_architecture.cuda_binary_target_compatibility_score``: ``a`` targets need the exact
    capability; plain and ``f`` targets run on later minors of the same major."""
    pattern = re.compile(r"^sm([0-9]{1,2})([0-9])([af]?)$")
    b, d = pattern.fullmatch(binary), pattern.fullmatch(device)
    if b is None or d is None:
        return None
    bm, bn, bs = int(b.group(1)), int(b.group(2)), b.group(3)
    dm, dn, ds = int(d.group(1)), int(d.group(2)), d.group(3)
    if (bm, bn, bs) == (dm, dn, ds):
        return (4, bn)
    if bs == "a":
        return (3, bn) if (bm, bn) == (dm, dn) else None
    if bm != dm or bn > dn:
        return None
    return (2 if bs == "f" else 1, bn)


# --- This machine ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class DeviceInfo:
    """What FlashInfer would see: the device's SM, every visible GPU's (major, minor), an H20 flag."""

    sm: int
    capabilities: tuple[tuple[int, int], ...]
    name: str = ""
    h20: bool = False
    source: str = ""


def this_gpu(spec: DeviceSpec | None = None) -> DeviceInfo | None:
    """What FlashInfer would see on this machine, from ``environment.detect_device`` (the one detector;
    ``MOE_REGISTRY_DEVICE`` overrides it there): None without an NVIDIA GPU. The target
    architectures are the detected GPU's (a host mixing GPU generations lists only the first; the
    adapter's load-time check reads every visible GPU from torch); H20 is known by its name."""
    spec = spec if spec is not None else detect_device()
    if spec.vendor != "nvidia" or spec.sm is None:
        return None
    return DeviceInfo(sm=spec.sm, capabilities=(divmod(spec.sm, 10),), name=spec.name,
                      h20=re.search(r"\bH20\b", spec.name) is not None, source="environment.detect_device")


# --- The installed flashinfer, without importing it --------------------------------------------

def flashinfer_package_root() -> Path | None:
    """Directory of the ``flashinfer`` package (``find_spec`` does not run its ``__init__``)."""
    try:
        spec = importlib.util.find_spec("flashinfer")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def flashinfer_version(package_root: Path | None = None) -> str | None:
    """``flashinfer.version.__version__``: read from ``_build_meta.py`` like FlashInfer does, else
    the distribution metadata."""
    root = package_root or flashinfer_package_root()
    if root is not None:
        meta = root / "_build_meta.py"
        try:
            found = re.search(r"""__version__\s*=\s*["']([^"']+)["']""", meta.read_text())
        except OSError:
            found = None
        if found:
            return found.group(1)
    try:
        return importlib.metadata.version(FLASHINFER_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cuda_version() -> tuple[int, int] | None:
    """CUDA toolkit version as FlashInfer reads it (``nvcc --version``, else torch.version.cuda);
    only needed to name an SM 12.0 directory."""
    home = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH")
    nvcc = str(Path(home) / "bin" / "nvcc") if home else shutil.which("nvcc")
    if nvcc:
        try:
            txt = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=15).stdout
            found = re.findall(r"release (\d+)\.(\d+),", txt)
            if found:
                return int(found[0][0]), int(found[0][1])
        except (OSError, subprocess.SubprocessError):
            pass
    torch = sys.modules.get("torch")
    cuda = getattr(getattr(torch, "version", None), "cuda", None) if torch is not None else None
    if cuda:
        major, minor = cuda.split(".")[:2]
        return int(major), int(minor)
    return None


# --- Status ------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ModuleStatus:
    """Whether a FlashInfer JIT module can be loaded without building. ``path`` is the artifact
    found (or the JIT-cache path that was checked); ``checked`` lists every path looked at."""

    built: bool
    module: str | None
    path: Path | None
    source: str | None  # "aot", "flashinfer-jit-cache", "jit-cache" or None
    detail: str
    checked: tuple[Path, ...] = ()

    def as_probe(self) -> tuple[bool, str]:
        return self.built, self.detail


def _jit_cache_providers(version: str | None) -> list[tuple[str, Path, frozenset[str] | None, frozenset[str] | None]]:
    """(label, jit_cache_dir, cuda_architectures, modules) of the installed flashinfer-jit-cache.

    Importing ``flashinfer_jit_cache`` (a separate, small package) is what FlashInfer's own
    ``env._get_aot_providers`` does; flashinfer itself stays unimported. Version checks as in
    ``env._check_jit_cache_version`` (``FLASHINFER_DISABLE_VERSION_CHECK`` skips them).
    """
    try:
        if importlib.util.find_spec("flashinfer_jit_cache") is None:
            return []
        import flashinfer_jit_cache  # type: ignore[import-not-found]
    except Exception:  # noqa: BLE001 - a broken optional package reads as absent
        return []

    def version_ok(v: str) -> bool:
        return (bool(os.environ.get("FLASHINFER_DISABLE_VERSION_CHECK")) or version is None
                or v == version or v.startswith(f"{version}+"))

    shim_version = str(getattr(flashinfer_jit_cache, "__version__", ""))
    if not version_ok(shim_version):
        return []
    found: list[tuple[str, Path, frozenset[str] | None, frozenset[str] | None]] = []
    providers = getattr(flashinfer_jit_cache, "get_jit_cache_providers", None)
    if callable(providers):
        for p in providers():
            pv = str(getattr(p, "version", shim_version))
            if not version_ok(pv):
                continue
            found.append((f"flashinfer-jit-cache provider {getattr(p, 'distribution', '?')}",
                          Path(p.jit_cache_dir), frozenset(p.cuda_architectures), frozenset(p.modules)))
    elif callable(getattr(flashinfer_jit_cache, "get_jit_cache_dir", None)):
        # Older single-directory layout: <dir>/<module>/<module>.so for the wheel's architectures.
        found.append(("flashinfer-jit-cache", Path(flashinfer_jit_cache.get_jit_cache_dir()), None, None))
    return found


_NINJA_BUILD = re.compile(r"^build\s+(.+?)\s*:\s*(\S+)\s*(.*)$")


def _static_ninja_check(build_dir: Path, so_path: Path) -> str | None:
    """Without running ninja: None if plausibly up to date, else why ninja would rebuild."""
    ninja_file = build_dir / "build.ninja"
    if not ninja_file.is_file():
        return f"{ninja_file} is missing, so FlashInfer would rewrite it and ninja would rebuild every object"
    for name in (".ninja_log", ".ninja_deps"):
        if not (build_dir / name).is_file():
            return f"{build_dir / name} is missing, so ninja treats every object as dirty"
    stale = missing = 0
    for line in ninja_file.read_text().splitlines():
        m = _NINJA_BUILD.match(line.strip())
        if not m:
            continue
        outputs = [Path(o) for o in m.group(1).split()]
        inputs = [Path(i) for i in m.group(3).split("|")[0].split()]
        for out in outputs:
            out = out if out.is_absolute() else build_dir / out
            if not out.exists():
                missing += 1
                continue
            t_out = out.stat().st_mtime
            for inp in inputs:
                inp = inp if inp.is_absolute() else build_dir / inp
                if not inp.exists() or inp.stat().st_mtime > t_out:
                    stale += 1
                    break
    if missing or stale:
        return f"ninja would rebuild: {missing} missing and {stale} out-of-date outputs in {ninja_file}"
    return None


def _ninja_dry_run(build_dir: Path, ninja: str) -> str | None:
    """``ninja -n`` in the build directory, as FlashInfer's ``run_ninja`` would run it. None when
    there is no work to do, else the reason."""
    try:
        done = subprocess.run([ninja, "-n", "-C", str(build_dir), "-f", str(build_dir / "build.ninja")],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ninja -n` failed to run: {exc}"
    text = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        return f"`ninja -n` in {build_dir} failed: {text.splitlines()[-1] if text else done.returncode}"
    if "no work to do" in text:
        return None
    steps = [ln for ln in text.splitlines() if re.match(r"^\[\d+/\d+\]", ln)]
    return f"`ninja -n` in {build_dir} would run {len(steps)} build step(s)"


def jit_module_status(module: str, *, archs: Iterable[tuple[int, str]], device_arch: str | None = None,
                      workspace_base: str | os.PathLike[str] | None = None, version: str | None = None,
                      package_root: Path | None = None, verify_with_ninja: bool = True) -> ModuleStatus:
    """Status of one named module for the given target architectures (FlashInfer's directory
    naming), without importing flashinfer and without building."""
    root = package_root or flashinfer_package_root()
    if root is None:
        return ModuleStatus(False, module, None, None, f"{FLASHINFER_DISTRIBUTION} is not installed")
    version = version or flashinfer_version(root)
    checked: list[Path] = []

    # 1. AOT: the package's own data/aot, then flashinfer-jit-cache providers.
    aot = root / "data" / "aot" / module / f"{module}.so"
    checked.append(aot)
    if aot.is_file():
        return ModuleStatus(True, module, aot, "aot", f"AOT module {aot} (loaded without building)", tuple(checked))
    for label, cache_dir, provider_archs, modules in _jit_cache_providers(version):
        if modules is not None and module not in modules:
            continue
        if provider_archs is not None and device_arch is not None and not any(
                _compat_score(a, device_arch) is not None for a in provider_archs):
            continue
        path = cache_dir / module / f"{module}.so"
        checked.append(path)
        if path.is_file():
            return ModuleStatus(True, module, path, "flashinfer-jit-cache",
                                f"AOT module {path} from {label} (loaded without building)", tuple(checked))

    # 2. The JIT cache, which FlashInfer loads only through ninja.
    base = Path(workspace_base) if workspace_base is not None else Path(
        os.environ.get("FLASHINFER_WORKSPACE_BASE", Path.home().as_posix()))
    build_dir = base / ".cache" / "flashinfer" / (version or "unknown") / arch_dir_name(archs) / "cached_ops" / module
    so_path = build_dir / f"{module}.so"
    checked.append(so_path)
    if not so_path.is_file():
        return ModuleStatus(False, module, so_path, None,
                            f"no AOT module and no JIT-cache module at {so_path}", tuple(checked))
    if os.environ.get("FLASHINFER_DISABLE_JIT"):
        return ModuleStatus(False, module, so_path, None,
                            f"{so_path} exists but FLASHINFER_DISABLE_JIT is set, and FlashInfer then loads AOT "
                            "modules only (jit/core.py JitSpec.build_and_load raises MissingJITCacheError)",
                            tuple(checked))
    ninja = shutil.which("ninja")
    if ninja is None:
        return ModuleStatus(False, module, so_path, None,
                            f"{so_path} exists but `ninja` is not on PATH, and FlashInfer runs ninja on every load "
                            "of a JIT-cache module (jit/cpp_ext.py run_ninja)", tuple(checked))
    problem = _static_ninja_check(build_dir, so_path)
    if problem is None and verify_with_ninja:
        problem = _ninja_dry_run(build_dir, ninja)
    if problem is not None:
        return ModuleStatus(False, module, so_path, None, f"{so_path} exists but {problem}", tuple(checked))
    how = "ninja -n: no work to do" if verify_with_ninja else "outputs newer than their inputs"
    return ModuleStatus(True, module, so_path, "jit-cache", f"JIT-cache module {so_path} is up to date ({how})",
                        tuple(checked))


def _device_archs(device: DeviceInfo) -> tuple[set[tuple[int, str]], str]:
    """(TARGET_CUDA_ARCHS as FlashInfer derives them, the device's own arch tag)."""
    cuda = None
    if any(major == 12 for major, _ in device.capabilities):
        cuda = _cuda_version()
    env = os.environ.get("FLASHINFER_CUDA_ARCH_LIST")
    if env:
        archs = parse_arch_list(env)
    else:
        archs = {normalize_arch(major, minor, cuda)[0] for major, minor in device.capabilities}
    major, minor = divmod(device.sm, 10)
    return archs, _arch_tag(*normalize_arch(major, minor, cuda)[0])


def cutlass_module_status(device: DeviceInfo | None = None, *, workspace_base: str | os.PathLike[str] | None = None,
                          version: str | None = None, package_root: Path | None = None,
                          verify_with_ninja: bool = True) -> ModuleStatus:
    """Is FlashInfer's CUTLASS fused-MoE module for ``device`` (default: this machine) loadable
    without a build? Never imports flashinfer, never builds."""
    device = device or this_gpu()
    if device is None:
        return ModuleStatus(False, None, None, None, "no NVIDIA GPU detected (torch.cuda / nvidia-smi)")
    module = cutlass_module_name(device.sm, h20=device.h20)
    if module is None:
        return ModuleStatus(False, None, None, None,
                            f"FlashInfer has no CUTLASS fused-MoE module for SM{device.sm} "
                            "(get_cutlass_fused_moe_module raises 'Invalid backend')")
    archs, device_arch = _device_archs(device)
    return jit_module_status(module, archs=archs, device_arch=device_arch, workspace_base=workspace_base,
                             version=version, package_root=package_root, verify_with_ninja=verify_with_ninja)


def fused_moe_module_status() -> tuple[bool, str]:
    """Probe for the declaration's ``jit_module`` requirement: ``(built, detail)`` for the CUTLASS
    fused-MoE module of this machine's GPU (``fused_moe_90`` on SM90). The detail names the exact
    path checked. Imports neither torch nor flashinfer and starts no build."""
    return cutlass_module_status().as_probe()


def trtllm_module_status() -> tuple[bool, str]:
    """Probe for the TRT-LLM-gen MoE module (``fused_moe_trtllm_sm100``; SM100 family only)."""
    device = this_gpu()
    if device is None:
        return False, "no NVIDIA GPU detected (torch.cuda / nvidia-smi)"
    module = trtllm_module_name(device.sm)
    if module is None:
        return False, f"TRT-LLM-gen MoE needs SM 10.x; this GPU is SM{device.sm}"
    archs, device_arch = _device_archs(device)
    return jit_module_status(module, archs=archs, device_arch=device_arch).as_probe()
