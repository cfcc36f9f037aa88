"""Few-row linears on CPU: the kernel chosen per weight shape and row count, by timing, cached on disk.

No test asserts a timing: the timing functions are replaced by counters or fixed tables where it matters.
"""

from __future__ import annotations

import json

import pytest
import torch

from steer_ui.model import cpu_matmul
from steer_ui.model.cpu_matmul import FewRowLinear, use_few_row_linears
from steer_ui.model.loading import load_model

PATHS = {"F.linear": frozenset(), "weight @ x.T": frozenset(range(cpu_matmul.MIN_ROWS, cpu_matmul.MAX_ROWS + 1))}


def _pair(in_f: int, out_f: int, bias: bool) -> tuple[torch.nn.Linear, FewRowLinear]:
    torch.manual_seed(0)
    plain = torch.nn.Linear(in_f, out_f, bias=bias)
    few = torch.nn.Linear(in_f, out_f, bias=bias)
    few.load_state_dict(plain.state_dict())
    assert use_few_row_linears(few) == 1
    return plain, few


@pytest.fixture
def decisions(monkeypatch) -> dict:
    """An empty decision table for the test, the process's own restored afterwards."""
    table: dict = {}
    monkeypatch.setattr(cpu_matmul, "DECISIONS", table)
    return table


@pytest.fixture
def counted(monkeypatch) -> dict[str, int]:
    """How often each path ran: F.linear (as cpu_matmul calls it) and weight @ x.T."""
    calls = {"F.linear": 0, "weight @ x.T": 0}
    linear, weight_at_x = torch.nn.functional.linear, cpu_matmul._weight_at_x

    def counting_linear(*args, **kwargs):
        calls["F.linear"] += 1
        return linear(*args, **kwargs)

    def counting_weight_at_x(*args):
        calls["weight @ x.T"] += 1
        return weight_at_x(*args)

    monkeypatch.setattr(cpu_matmul.F, "linear", counting_linear)
    monkeypatch.setattr(cpu_matmul, "_weight_at_x", counting_weight_at_x)
    return calls


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 64), (2, 64), (2, 1, 64), (2, 2, 64), (1, 8, 64), (3, 3, 64), (12, 64)])
def test_matches_f_linear_and_is_contiguous_on_either_path(shape, bias, path, decisions):
    plain, few = _pair(64, 96, bias)
    decisions[(96, 64)] = PATHS[path]
    x = torch.randn(*shape)
    with torch.inference_mode():
        want, got = plain(x), few(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # A strided output once sent attention to torch's slow math kernel and the next layer into MKL's
    # slow layout: the swap must hand on contiguous tensors.
    assert got.is_contiguous()


@pytest.mark.parametrize("path", PATHS)
def test_strided_input_gives_the_same_product(path, decisions):
    plain, few = _pair(64, 32, True)
    decisions[(32, 64)] = PATHS[path]
    x = torch.randn(64, 2).T  # two rows, transposed view
    torch.testing.assert_close(few(x), plain(x), rtol=1e-5, atol=1e-5)


def test_the_decision_for_shape_and_rows_is_honoured(decisions, counted):
    _, few = _pair(64, 96, False)
    decisions[(96, 64)] = frozenset({2, 4})
    with torch.inference_mode():
        for rows, path in [(2, "weight @ x.T"), (4, "weight @ x.T"), (3, "F.linear"), (1, "F.linear"),
                           (12, "F.linear")]:
            before = dict(counted)
            few(torch.randn(1, rows, 64))
            assert {k: counted[k] - before[k] for k in counted} == {p: int(p == path) for p in counted}, rows
        decisions.clear()  # no decision for the shape: F.linear
        before = counted["F.linear"]
        few(torch.randn(2, 64))
        assert counted == {"F.linear": before + 1, "weight @ x.T": 2}
def test_subclasses_are_left_alone():
    class Adapter(torch.nn.Linear):
        pass

    model = torch.nn.Sequential(torch.nn.Linear(4, 4), Adapter(4, 4))
    assert not cpu_matmul.in_use(model)
    assert use_few_row_linears(model) == 1
    assert type(model[1]) is Adapter
    assert cpu_matmul.in_use(model)


def test_the_bundled_model_gets_them_on_cpu_float32_only(bundled, tiny_dirs, monkeypatch):
    linears = [m for m in bundled.model.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(type(m) is FewRowLinear for m in linears)  # every projection and the lm_head
    assert cpu_matmul.in_use(bundled.model)
    # Every weight shape has a decision (which one depends on this CPU).
    shapes = {(m.out_features, m.in_features) for m in linears}
    assert shapes <= set(cpu_matmul.DECISIONS)
    assert set(cpu_matmul.summary(bundled.model)) == {f"{o}x{i}" for o, i in shapes}

    def no_timing(*_):
        raise AssertionError("decide() ran")

    monkeypatch.setattr(cpu_matmul, "decide", no_timing)
    bf16 = load_model(str(tiny_dirs["llama"]), device="cpu", dtype="bfloat16")
    assert not any(type(m) is FewRowLinear for m in bf16.model.modules())
    assert not cpu_matmul.in_use(bf16.model) and cpu_matmul.summary(bf16.model) == {}
    monkeypatch.setenv(cpu_matmul.OPT_OUT_ENV, "1")
    plain = load_model(str(tiny_dirs["llama"]), device="cpu", dtype="float32")
    assert not any(type(m) is FewRowLinear for m in plain.model.modules())
    assert not cpu_matmul.in_use(plain.model) and cpu_matmul.summary(plain.model) == {}


def test_other_devices_and_the_opt_out_are_left_alone(monkeypatch, tmp_path):
    def no_timing(*_):
        raise AssertionError("decide() ran")

    monkeypatch.setattr(cpu_matmul, "decide", no_timing)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    assert cpu_matmul.use_where_wanted(model, torch.device("cuda"), torch.float32, tmp_path) == 0
    assert cpu_matmul.use_where_wanted(model, torch.device("cpu"), torch.float16, tmp_path) == 0
    monkeypatch.setenv(cpu_matmul.OPT_OUT_ENV, "1")
    assert cpu_matmul.use_where_wanted(model, torch.device("cpu"), torch.float32, tmp_path) == 0
    assert type(model[0]) is torch.nn.Linear and not (tmp_path / cpu_matmul.CACHE_SUBDIR).exists()


def test_a_two_row_step_agrees_with_the_plain_model(bundled, decisions, counted):
    """The bundled model's logits for a 2-row decode step, with ``weight @ x.T`` forced everywhere and plain."""
    for m in bundled.model.modules():
        if type(m) is FewRowLinear:
            decisions[(m.out_features, m.in_features)] = PATHS["weight @ x.T"]
    ids = torch.tensor([bundled.tokenizer.encode("Is 7 prime? Answer yes or no.")] * 2)
    with torch.inference_mode():
        prefix = bundled.model(input_ids=ids[:, :-1], use_cache=True)
        few = bundled.model(input_ids=ids[:, -1:], **{bundled.cache_arg: getattr(prefix, bundled.cache_arg)}).logits
        assert counted["weight @ x.T"] == bundled.n_layers * 7 + 1  # q k v o gate up down per layer, lm_head
        for m in bundled.model.modules():
            if type(m) is FewRowLinear:
                m.__class__ = torch.nn.Linear
        try:
            prefix = bundled.model(input_ids=ids[:, :-1], use_cache=True)
            cache = {bundled.cache_arg: getattr(prefix, bundled.cache_arg)}
            plain = bundled.model(input_ids=ids[:, -1:], **cache).logits
        finally:
            use_few_row_linears(bundled.model)
    assert (few.argmax(-1) == plain.argmax(-1)).all()
    torch.testing.assert_close(few, plain, rtol=1e-4, atol=1e-3)
    assert torch.equal(few[0], few[1])  # identical rows stay identical


# --- choosing by timing, and the cache ---------------------------------------------------------------

def _two_shapes() -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 16), torch.nn.Linear(16, 32))
    assert use_few_row_linears(model) == 3
    return model


@pytest.fixture
def fake_timing(monkeypatch) -> list[tuple[int, int]]:
    """time_shape replaced: 32x16 takes weight @ x.T at 2-3 rows, 16x32 never; the shapes timed, in order."""
    timed: list[tuple[int, int]] = []

    def time_shape(weight, retries=cpu_matmul.RETRIES):
        timed.append(tuple(weight.shape))
        return (frozenset({2, 3}) if tuple(weight.shape) == (32, 16) else frozenset()), True

    monkeypatch.setattr(cpu_matmul, "time_shape", time_shape)
    return timed


def test_decisions_are_timed_once_then_read_from_the_cache(tmp_path, decisions, fake_timing, monkeypatch):
    model = _two_shapes()
    cpu_matmul.decide(model, tmp_path)
    assert sorted(fake_timing) == [(16, 32), (32, 16)]  # each distinct shape once, not each layer
    assert decisions == {(32, 16): frozenset({2, 3}), (16, 32): frozenset()}
    assert cpu_matmul.LAST_DECIDE["source"] == "timed"
    files = list((tmp_path / cpu_matmul.CACHE_SUBDIR).iterdir())
    assert [f.suffix for f in files] == [".json"]  # no temporary file left behind
    data = json.loads(files[0].read_text())
    assert data["weight_at_x"] == {"16x32": [], "32x16": [2, 3]}
    assert data["key"] == cpu_matmul.cache_key([(32, 16), (16, 32)])
    assert data["key"]["threads"] == torch.get_num_threads() and data["key"]["torch"] == torch.__version__

    # In this process: no file, no timing.
    cpu_matmul.decide(model, tmp_path)
    assert cpu_matmul.LAST_DECIDE["source"] == "memory" and len(fake_timing) == 2
    # A restart (an empty table) reads the file and times nothing.
    monkeypatch.setattr(cpu_matmul, "DECISIONS", {})
    cpu_matmul.decide(model, tmp_path)
    assert cpu_matmul.LAST_DECIDE["source"] == "cache" and len(fake_timing) == 2
    assert cpu_matmul.DECISIONS == {(32, 16): frozenset({2, 3}), (16, 32): frozenset()}
    assert cpu_matmul.summary(model) == {"32x16": [2, 3], "16x32": []}
    # Another thread count is another key: timed again.
    monkeypatch.setattr(cpu_matmul, "DECISIONS", {})
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)
    cpu_matmul.decide(model, tmp_path)
    assert cpu_matmul.LAST_DECIDE["source"] == "timed" and len(fake_timing) == 4
    assert len(list((tmp_path / cpu_matmul.CACHE_SUBDIR).iterdir())) == 2


@pytest.mark.parametrize("content", ["{not json", "[]", '{"key": {"cpu": "other"}, "weight_at_x": {}}', "KEY_NO_ROWS",
                                     "KEY_BAD_ROWS", ""])
def test_a_corrupt_cache_file_is_ignored_and_rewritten(tmp_path, decisions, fake_timing, content):
    model = _two_shapes()
    key = cpu_matmul.cache_key([(32, 16), (16, 32)])
    path = cpu_matmul.cache_file(tmp_path, key)
    path.parent.mkdir(parents=True)
    if content == "KEY_NO_ROWS":
        content = json.dumps({"key": key, "weight_at_x": {"32x16": [2]}})
    elif content == "KEY_BAD_ROWS":
        content = json.dumps({"key": key, "weight_at_x": {"32x16": [2], "16x32": [99]}})
    path.write_text(content)
    cpu_matmul.decide(model, tmp_path)
    assert cpu_matmul.LAST_DECIDE["source"] == "timed" and len(fake_timing) == 2
    assert json.loads(path.read_text())["weight_at_x"] == {"16x32": [], "32x16": [2, 3]}
    assert decisions == {(32, 16): frozenset({2, 3}), (16, 32): frozenset()}


def test_timings_taken_on_a_busy_cpu_are_used_but_not_cached(tmp_path, decisions, monkeypatch):
    calls = []

    def time_shape(weight, retries=cpu_matmul.RETRIES):
        calls.append(retries)
        return frozenset({4}), tuple(weight.shape) != (32, 16)  # 32x16's timings were implausible

    monkeypatch.setattr(cpu_matmul, "time_shape", time_shape)
    cpu_matmul.decide(_two_shapes(), tmp_path)
    assert decisions == {(32, 16): frozenset({4}), (16, 32): frozenset({4})}
    assert not (tmp_path / cpu_matmul.CACHE_SUBDIR).exists() or not any((tmp_path / cpu_matmul.CACHE_SUBDIR).iterdir())
    assert calls == [cpu_matmul.RETRIES, 0]  # once the CPU proved busy, no more retries
    # ... and past the busy budget, no more timing at all: F.linear.
    monkeypatch.setattr(cpu_matmul, "DECISIONS", {})
    monkeypatch.setattr(cpu_matmul, "BUSY_BUDGET_S", 0.0)
    calls.clear()
    cpu_matmul.decide(_two_shapes(), tmp_path)
    assert calls == [cpu_matmul.RETRIES]
    assert cpu_matmul.DECISIONS == {(32, 16): frozenset({4}), (16, 32): frozenset()}


def test_the_largest_shapes_are_timed_first(tmp_path, decisions, fake_timing):
    model = torch.nn.Sequential(torch.nn.Linear(16, 8), torch.nn.Linear(8, 64), torch.nn.Linear(64, 16))
    use_few_row_linears(model)
    cpu_matmul.decide(model, tmp_path)
    assert fake_timing == [(16, 64), (64, 8), (8, 16)]


def test_an_unwritable_cache_only_logs(tmp_path, decisions, fake_timing):
    blocker = tmp_path / "file"
    blocker.write_text("")
    cpu_matmul.decide(_two_shapes(), blocker)  # cpu_kernels/ cannot be made under a file
    assert decisions[(32, 16)] == frozenset({2, 3})


def _fake_best_times(monkeypatch, wins: set[int], implausible: set[int] = frozenset()) -> list[int]:
    """best_times replaced by fixed numbers: weight @ x.T twice as fast at ``wins`` rows; the rows timed."""
    timed: list[int] = []

    def best_times(paths, repeats=cpu_matmul.REPEATS):
        if len(paths) == 1:
            return [1.0]  # the 1-row reference
        rows = paths[0]().shape[0]
        timed.append(rows)
        if rows in implausible:
            return [100.0 * rows, 100.0 * rows]
        return [1.0 * rows, 0.5 * rows] if rows in wins else [1.0 * rows, 1.0 * rows]

    monkeypatch.setattr(cpu_matmul, "best_times", best_times)
    return timed


@pytest.mark.parametrize("wins, timed", [
    ({2, 3, 4, 5, 6, 7, 8}, [2, 4, 8]),          # 2, 4 and 8 agree: nothing in between is timed
    (set(), [2, 4, 8]),
    ({4, 5, 6, 7, 8}, [2, 4, 8, 3]),             # 2 and 4 disagree: 3 is timed
    ({2, 3, 4, 5}, [2, 4, 8, 6, 5]),             # 4 and 8 disagree: 6, then 5 (6 and 8 agree on 7)
])
def test_rows_2_4_8_are_timed_and_rows_between_only_where_they_disagree(monkeypatch, wins, timed):
    got = _fake_best_times(monkeypatch, wins)
    chosen, settled = cpu_matmul.time_shape(torch.zeros(8, 4))
    assert settled and chosen == frozenset(wins) and got == timed


def test_implausible_timings_are_retried_then_use_f_linear(monkeypatch):
    timed = _fake_best_times(monkeypatch, wins={2, 3, 4, 5, 6, 7, 8}, implausible={2})
    chosen, settled = cpu_matmul.time_shape(torch.zeros(8, 4))
    assert not settled and chosen == frozenset({3, 4, 5, 6, 7, 8}) and timed == [2, 2, 4, 8, 3]
    timed.clear()
    chosen, settled = cpu_matmul.time_shape(torch.zeros(8, 4), retries=0)
    assert not settled and timed == [2, 4, 8, 3]


def test_real_timing_on_a_small_model_decides_every_shape_and_caches(tmp_path, decisions):
    """The real timing path end to end (which path wins is the CPU's business, not asserted)."""
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Linear(32, 8, bias=False))
    x = torch.randn(3, 16)
    with torch.inference_mode():
        want = model(x)
        assert cpu_matmul.use_where_wanted(model, torch.device("cpu"), torch.float32, tmp_path) == 2
        got = model(x)
    assert set(decisions) == {(32, 16), (8, 32)}
    assert all(rows <= set(range(2, 9)) for rows in decisions.values())
    assert cpu_matmul.LAST_DECIDE["source"] in ("timed", "timed, busy CPU, not cached")
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_summary_and_its_line_for_the_bench():
    assert cpu_matmul.describe({"49152x576": [2, 3, 4, 5, 6, 7, 8], "1536x576": [2, 3, 4, 5, 6, 7, 8],
                                "576x576": [2, 3, 4, 6], "192x576": []}) == (
        "weight @ x.T for 49152x576, 1536x576 at 2-8 rows; 576x576 at 2-4,6 rows, F.linear elsewhere")
    assert cpu_matmul.describe({"576x576": [2], "192x576": [8]}) == \
        "weight @ x.T for 576x576 at 2 rows; 192x576 at 8 rows"
    assert cpu_matmul.describe({"576x576": [], "192x576": []}) == "F.linear for every shape"
