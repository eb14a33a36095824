"""The cache of executed engine answers (moe_registry/cache.py): a second ``explain`` reads what the
first one executed, and nothing else does — a refusal, another interpreter, another environment or
another request runs the engine again. No engine is needed: the child / worker that would run it is
replaced by a counter."""

from __future__ import annotations

import pytest

from moe_registry import cache
from moe_registry.engines.answer import executed_key
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
