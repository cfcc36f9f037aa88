"""Few-row linears on CPU: the same product as F.linear, in the layout attention and MKL need."""

from __future__ import annotations

import pytest
import torch

from steer_ui.model import cpu_matmul
from steer_ui.model.cpu_matmul import FewRowLinear, use_few_row_linears
from steer_ui.model.loading import load_model


def _pair(in_f: int, out_f: int, bias: bool) -> tuple[torch.nn.Linear, FewRowLinear]:
    torch.manual_seed(0)
    plain = torch.nn.Linear(in_f, out_f, bias=bias)
    few = torch.nn.Linear(in_f, out_f, bias=bias)
    few.load_state_dict(plain.state_dict())
    assert use_few_row_linears(few) == 1
    return plain, few


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("shape", [(1, 64), (2, 64), (2, 1, 64), (2, 2, 64), (1, 8, 64), (3, 3, 64), (12, 64)])
def test_matches_f_linear_and_is_contiguous(shape, bias):
    plain, few = _pair(64, 96, bias)
    x = torch.randn(*shape)
    with torch.inference_mode():
        want, got = plain(x), few(x)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # A strided output once sent attention to torch's slow math kernel and the next layer into MKL's
    # slow layout: the swap must hand on contiguous tensors.
    assert got.is_contiguous()


def test_strided_input_gives_the_same_product():
    plain, few = _pair(64, 32, True)
    x = torch.randn(64, 2).T  # two rows, transposed view
    torch.testing.assert_close(few(x), plain(x), rtol=1e-5, atol=1e-5)


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

    bf16 = load_model(str(tiny_dirs["llama"]), device="cpu", dtype="bfloat16")
    assert not any(type(m) is FewRowLinear for m in bf16.model.modules())
    assert not cpu_matmul.in_use(bf16.model)
    monkeypatch.setenv(cpu_matmul.OPT_OUT_ENV, "1")
    plain = load_model(str(tiny_dirs["llama"]), device="cpu", dtype="float32")
    assert not any(type(m) is FewRowLinear for m in plain.model.modules())
    assert not cpu_matmul.in_use(plain.model)


def test_a_two_row_step_agrees_with_the_plain_model(bundled):
    """The bundled model's logits for a 2-row decode step, with and without the swap."""
    ids = torch.tensor([bundled.tokenizer.encode("Is 7 prime? Answer yes or no.")] * 2)
    with torch.inference_mode():
        prefix = bundled.model(input_ids=ids[:, :-1], use_cache=True)
        few = bundled.model(input_ids=ids[:, -1:], past_key_values=prefix.past_key_values).logits
        for m in bundled.model.modules():
            if type(m) is FewRowLinear:
                m.__class__ = torch.nn.Linear
        try:
            prefix = bundled.model(input_ids=ids[:, :-1], use_cache=True)
            plain = bundled.model(input_ids=ids[:, -1:], past_key_values=prefix.past_key_values).logits
        finally:
            use_few_row_linears(bundled.model)
    assert (few.argmax(-1) == plain.argmax(-1)).all()
    torch.testing.assert_close(few, plain, rtol=1e-4, atol=1e-3)
    assert torch.equal(few[0], few[1])  # identical rows stay identical
