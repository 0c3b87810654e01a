"""The precision a ranking step runs in, and a victim's copy in another dtype."""

from __future__ import annotations

import pytest
import torch

from backdoorlab.errors import BackdoorLabError
from backdoorlab.models.precision import in_dtype, native_bfloat16, search_dtype
from tiny_models import tiny_bert_victim


def test_search_dtype_follows_the_setting_and_auto_follows_the_device() -> None:
    cpu = torch.device("cpu")
    assert search_dtype("float32", cpu) is torch.float32
    assert search_dtype("bfloat16", cpu) is torch.bfloat16
    assert search_dtype("auto", cpu) is (torch.bfloat16 if native_bfloat16(cpu) else torch.float32)
    assert native_bfloat16(torch.device("meta")) is False
    with pytest.raises(BackdoorLabError, match="unknown search precision 'fp8'; choose one of auto, float32, bfloat16"):
        search_dtype("fp8", cpu)


def test_a_victim_in_another_dtype_is_a_copy_that_leaves_the_original_alone() -> None:
    victim = tiny_bert_victim()
    texts = ["the film was good", "a bad film", "the day was long and the sea was calm"]
    before = victim.label_probs(texts)
    assert in_dtype(victim, torch.float32) is victim
    copy = in_dtype(victim, torch.bfloat16)
    assert copy is not victim and copy.tokenizer is victim.tokenizer and copy.label_names == victim.label_names
    assert {p.dtype for p in copy.model.parameters()} == {torch.bfloat16}
    assert {p.dtype for p in victim.model.parameters()} == {torch.float32}
    assert torch.equal(victim.label_probs(texts), before)
    assert torch.allclose(copy.label_probs(texts), before, atol=0.02)  # bfloat16 keeps about 3 significant digits
