"""The cache of executed engine answers (moe_registry/cache.py): a second ``explain`` reads what the
first one executed, and nothing else does — a refusal, another interpreter, another environment or
another request runs the engine again. No engine is needed: the child / worker that would run it is
replaced by a counter."""

from __future__ import annotations

import pytest

from moe_registry import cache
from moe_registry.engines.answer import EngineAnswer, executed_key
from moe_registry.engines.sglang import executed as sglang_executed
from moe_registry.engines.vllm import executed as vllm_executed
from moe_registry.engines.vllm.executed import Case, CaseResult


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    for name in [k for k in __import__("os").environ if k.startswith(("VLLM_", "SGL_", "SGLANG_"))]:
        monkeypatch.delenv(name)
    return tmp_path / "moe-registry"


# --- the store --------------------------------------------------------------------------------------

def test_an_entry_is_read_back_only_for_its_own_key(private_cache):
    cache.write("k", "key one", {"answer": 1})
    assert cache.read("k", "key one") == {"answer": 1}
    assert cache.read("k", "key two") is None and cache.read("other", "key one") is None
    (entry,) = private_cache.iterdir()
    entry.write_text('{"format": 1, "key": "key one", "value": ')  # truncated: reads as absent
    assert cache.read("k", "key one") is None


def test_a_cache_directory_writable_by_others_is_not_used(private_cache):
    private_cache.mkdir(mode=0o777)
    private_cache.chmod(0o777)
    cache.write("k", "key", 1)
    assert cache.read("k", "key") is None and not list(private_cache.iterdir())


def test_the_key_follows_the_environment_and_the_request(monkeypatch):
    base = executed_key("vllm", "0.34.0", {"model": "a"})
    assert executed_key("vllm", "0.34.0", {"model": "a"}) == base
    assert executed_key("vllm", "0.34.0", {"model": "b"}) != base
    assert executed_key("vllm", "0.33.0", {"model": "a"}) != base
    monkeypatch.setenv("VLLM_USE_FLASHINFER_MOE_FP8", "1")  # vLLM reads it in its oracle
    assert executed_key("vllm", "0.34.0", {"model": "a"}) != base
    monkeypatch.delenv("VLLM_USE_FLASHINFER_MOE_FP8")
    monkeypatch.setenv("UNRELATED_SETTING", "1")
    assert executed_key("vllm", "0.34.0", {"model": "a"}) == base


# --- vLLM -------------------------------------------------------------------------------------------

def _vllm_child(monkeypatch, error=None):
    calls = []

    def child(cases, python, timeout):
        calls.append([c.id for c in cases])
        return {c.id: CaseResult(c.id, "0.34.0", [], [], ["faked"], error=error) for c in cases}, None

    monkeypatch.setattr(vllm_executed, "_run_child", child)
    monkeypatch.setattr(vllm_executed, "vllm_version", lambda: "0.34.0")
    return calls


CASE = Case(id="qwen3", config={"model_type": "qwen3_moe"}, device="h100", sm=90, memory_gb=80.0)


def test_vllm_a_clean_answer_is_executed_once(monkeypatch):
    calls = _vllm_child(monkeypatch)
    first = vllm_executed.run_cases([CASE], cached=True)
    second = vllm_executed.run_cases([CASE], cached=True)
    assert calls == [["qwen3"]]
    assert second["qwen3"].to_json() == first["qwen3"].to_json()
    # Another layout is another request; uncached calls and another interpreter always run.
    vllm_executed.run_cases([Case(**{**CASE.__dict__, "tp": 2})], cached=True)
    vllm_executed.run_cases([CASE])
    vllm_executed.run_cases([CASE], cached=True, python="/other/python")
    assert len(calls) == 4


def test_vllm_a_refusal_is_asked_again(monkeypatch):
    calls = _vllm_child(monkeypatch, error="ImportError: this machine lacks something")
    vllm_executed.run_cases([CASE], cached=True)
    vllm_executed.run_cases([CASE], cached=True)
    assert len(calls) == 2


def test_vllm_an_environment_variable_it_reads_runs_it_again(monkeypatch):
    calls = _vllm_child(monkeypatch)
    vllm_executed.run_cases([CASE], cached=True)
    monkeypatch.setenv("VLLM_USE_DEEP_GEMM", "0")
    vllm_executed.run_cases([CASE], cached=True)
    assert len(calls) == 2


# --- SGLang -----------------------------------------------------------------------------------------

def _sglang_worker(monkeypatch, error=None):
    calls = []

    def worker(request, timeout):
        calls.append(request)
        return {"version": "0.5.23", "fakes": [], "assumptions": [],
                "answers": [{"config": {"moe_runner_backend": "triton"}, "layers": [], "error": error, "log": []}
                            for _ in request["cases"]]}

    monkeypatch.setattr(sglang_executed, "require_sglang", lambda: None)
    monkeypatch.setattr(sglang_executed, "_run_worker", worker)
    return calls


def _sglang_case(args=("--tp-size", "1")):
    return sglang_executed.Case(files={"config.json": {"model_type": "qwen3_moe"}}, args=args, layers=((0, "mlp"),),
                                key="qwen3")


def test_sglang_a_clean_answer_is_executed_once(monkeypatch):
    from moe_registry.schemas.device import get_device

    calls = _sglang_worker(monkeypatch)
    h100 = get_device("h100")
    first, _ = sglang_executed.run_cases(h100, [_sglang_case()], cached=True)
    second, meta = sglang_executed.run_cases(h100, [_sglang_case()], cached=True)
    assert len(calls) == 1 and first == second and meta["version"] == "0.5.23"
    sglang_executed.run_cases(h100, [_sglang_case(("--tp-size", "2"))], cached=True)
    sglang_executed.run_cases(get_device("b200"), [_sglang_case()], cached=True)
    sglang_executed.run_cases(h100, [_sglang_case()])
    assert len(calls) == 4


def test_sglang_a_refusal_is_asked_again(monkeypatch):
    from moe_registry.schemas.device import get_device

    calls = _sglang_worker(monkeypatch, error="ValueError: no runner")
    for _ in range(2):
        (outcome,), _ = sglang_executed.run_cases(get_device("h100"), [_sglang_case()], cached=True)
        assert outcome.error == "ValueError: no runner"
    assert len(calls) == 2


def test_sglang_a_corrupt_entry_runs_the_worker_again(monkeypatch, private_cache):
    from moe_registry.schemas.device import get_device

    calls = _sglang_worker(monkeypatch)
    sglang_executed.run_cases(get_device("h100"), [_sglang_case()], cached=True)
    (entry,) = private_cache.iterdir()
    entry.write_text(entry.read_text().replace('"answers"', '"answerz"'))  # right key, wrong shape
    (outcome,), _ = sglang_executed.run_cases(get_device("h100"), [_sglang_case()], cached=True)
    assert outcome.config == {"moe_runner_backend": "triton"} and len(calls) == 2


# --- what the key is made of ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["VLLM_USE_DEEP_GEMM", "SGL_ENABLE_JIT", "FLASHINFER_CUBIN_DIR",
                                  "MOE_REGISTRY_DEVICE", "CUDA_VISIBLE_DEVICES"])
def test_every_variable_family_the_engines_read_is_in_the_key(monkeypatch, name):
    base = executed_key("vllm", "0.34.0", {})
    monkeypatch.setenv(name, "1")
    assert executed_key("vllm", "0.34.0", {}) != base


def test_the_request_is_keyed_by_content_not_order_and_may_hold_paths(tmp_path):
    assert executed_key("sglang", "0.5.23", {"a": 1, "b": 2}) == executed_key("sglang", "0.5.23", {"b": 2, "a": 1})
    assert executed_key("sglang", "0.5.23", {"file": tmp_path}) != executed_key("sglang", "0.5.23", {"file": "x"})


def test_reinstalling_the_engine_changes_the_key(monkeypatch, tmp_path):
    from importlib import metadata

    dist_info = tmp_path / "vllm-0.34.0.dist-info"
    dist_info.mkdir()

    class Dist:
        _path = dist_info

    monkeypatch.setattr(metadata, "distribution", lambda name: Dist())
    installed = executed_key("vllm", "0.34.0", {})
    __import__("os").utime(dist_info, ns=(1, 1))  # a reinstall rewrites the metadata
    assert executed_key("vllm", "0.34.0", {}) != installed

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(metadata, "distribution", missing)
    assert executed_key("vllm", "0.34.0", {}) != installed


def test_editing_our_engine_code_changes_the_key(monkeypatch, tmp_path):
    from moe_registry.engines import answer as answer_mod

    (tmp_path / "vllm").mkdir()
    module = tmp_path / "vllm" / "layer.py"
    module.write_text("A = 1\n")
    monkeypatch.setattr(answer_mod, "__file__", str(tmp_path / "answer.py"))
    before = executed_key("vllm", "0.34.0", {})
    module.write_text("A = 22\n")  # another size
    assert executed_key("vllm", "0.34.0", {}) != before


# --- the store's guards -----------------------------------------------------------------------------

def test_without_xdg_the_cache_is_under_home(monkeypatch, tmp_path):
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cache.write("k", "key", 1)
    assert (tmp_path / "home" / ".cache" / "moe-registry").is_dir() and cache.read("k", "key") == 1


def test_the_directory_is_made_private_with_its_parents(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a" / "b"))
    directory = cache.cache_dir()
    assert directory == tmp_path / "a" / "b" / "moe-registry"
    assert directory.stat().st_mode & 0o777 == 0o700


def test_a_relative_or_non_directory_cache_home_is_not_used(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/dir")
    assert cache.cache_dir() is None
    (tmp_path / "moe-registry").write_text("a file")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache.cache_dir() is None


def test_a_directory_others_can_only_enter_is_used(private_cache):
    private_cache.mkdir()
    private_cache.chmod(0o711)  # no group / other write: fine
    cache.write("k", "key", 1)
    assert cache.read("k", "key") == 1


def test_an_entry_behind_a_link_or_a_fifo_reads_as_absent(private_cache, tmp_path):
    import os

    cache.write("k", "key", 1)
    (entry,) = private_cache.iterdir()
    elsewhere = tmp_path / "planted.json"
    elsewhere.write_bytes(entry.read_bytes())
    entry.unlink()
    entry.symlink_to(elsewhere)
    assert cache.read("k", "key") is None  # O_NOFOLLOW
    entry.unlink()
    os.mkfifo(entry)
    assert cache.read("k", "key") is None  # opened non-blocking, then refused: not a regular file


def test_the_size_limit_is_inclusive(private_cache, monkeypatch):
    import json

    cache.write("k", "key", "x")
    (entry,) = private_cache.iterdir()
    size = len(entry.read_bytes())
    monkeypatch.setattr(cache, "MAX_BYTES", size)
    assert cache.read("k", "key") == "x"
    monkeypatch.setattr(cache, "MAX_BYTES", size - 1)
    assert cache.read("k", "key") is None
    assert json.loads(entry.read_text())["key"] == "key"


def test_an_entry_of_another_format_or_key_reads_as_absent(private_cache):
    import json

    cache.write("k", "key", 1)
    (entry,) = private_cache.iterdir()
    entry.write_text(json.dumps({"format": cache.FORMAT + 1, "key": "key", "value": 1}))
    assert cache.read("k", "key") is None
    entry.write_text(json.dumps({"format": cache.FORMAT, "key": "other", "value": 1}))
    assert cache.read("k", "key") is None
    entry.write_text(json.dumps([cache.FORMAT, "key", 1]))
    assert cache.read("k", "key") is None


def test_a_write_is_atomic_beside_the_entry_and_leaves_nothing_behind(private_cache, monkeypatch):
    import tempfile

    made = []
    real = tempfile.mkstemp

    def mkstemp(**kwargs):
        made.append(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    cache.write("k", "key", {"é": 1})  # non-ASCII survives whatever the locale
    cache.write("k", "bad", {1, 2})  # not JSON: skipped, its temporary file removed
    assert made[0]["dir"] == private_cache and made[0]["prefix"] == ".k-" and made[0]["suffix"] == ".tmp"
    assert [p.name.startswith("k-") and p.suffix == ".json" for p in private_cache.iterdir()] == [True]
    assert cache.read("k", "key") == {"é": 1} and cache.read("k", "bad") is None


def test_metadata_without_a_path_still_gives_a_key(monkeypatch):
    from importlib import metadata

    class Dist:  # a Distribution that is not a PathDistribution (no _path)
        pass

    monkeypatch.setattr(metadata, "distribution", lambda name: Dist())
    assert "no metadata path" in executed_key("vllm", "0.34.0", {})


@pytest.mark.skipif(not hasattr(__import__("os"), "geteuid") or __import__("os").geteuid() != 0,
                    reason="giving the directory to another user needs root")
def test_a_cache_directory_of_another_user_is_not_used(private_cache):
    import os

    private_cache.mkdir(mode=0o700)
    os.chown(private_cache, 12345, 12345)
    assert cache.cache_dir() is None


# --- which engine's flag a comparison names ----------------------------------------------------------

def test_the_fix_names_the_flag_of_the_engine_that_answered():
    from moe_registry.engines.answer import compare
    from moe_registry.registry import default_registry

    decls = tuple(default_registry().declarations())
    humming = next(d for d in decls if d.id == "humming")
    assert humming.engines.vllm and humming.engines.vllm != humming.engines.sglang  # SGLang names no humming here
    vllm = EngineAnswer(engine="vllm", version="0.34.0", source="model", flag="triton", kernel="TRITON (TritonExperts)",
                        family="triton")
    assert compare(vllm, "humming", (), decls).fix == f"--moe-backend {humming.engines.vllm}"


def test_a_provider_registered_by_a_package_is_kept(monkeypatch):
    from moe_registry.engines import answer as answer_mod

    monkeypatch.setattr(answer_mod, "PROVIDERS", {})
    mine = {engine: (lambda plan: ()) for engine in ("vllm", "sglang")}
    for engine, provider in mine.items():
        answer_mod.register_provider(engine, "executed", provider)
    answer_mod._load_builtin_providers()  # the built-ins fill in only what nobody provides
    assert {e: answer_mod.PROVIDERS[e]["executed"] for e in mine} == mine
