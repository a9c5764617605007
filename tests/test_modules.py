"""lowbit.modules: the one module-swap helper and the one input-capture helper every workflow uses."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lowbit.modules import Captured, RunningAbsmax, StopForward, capture, replace_module, swap_modules


class _Head(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x)


def _nested() -> nn.Module:
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4))
    return nn.Sequential(nn.Linear(3, 4), inner, _Head())


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


class Tagged(nn.Module):
    def __init__(self, name: str, old: nn.Module) -> None:
        super().__init__()
        self.name, self.old = name, old

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.old(x)


def test_swap_modules_nested_names_in_order() -> None:
    model = _nested()
    old = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    names = swap_modules(model, lambda _n, m: isinstance(m, nn.Linear), Tagged)
    assert names == ["0", "1.0", "1.2", "2.head"]
    for name in names:
        new = model.get_submodule(name)
        assert isinstance(new, Tagged) and new.name == name and new.old is old[name]
    assert model(torch.randn(2, 3)).shape == (2, 2)


def test_swap_modules_replaces_a_chosen_module_whole() -> None:
    """The submodules of a chosen module are not visited: it is replaced with everything inside it."""
    model = _nested()
    seen: list[str] = []

    def pick(name: str, m: nn.Module) -> bool:
        seen.append(name)
        return isinstance(m, nn.Sequential) and name == "1"

    assert swap_modules(model, pick, lambda _n, m: nn.Identity()) == ["1"]
    assert seen == ["0", "1", "2", "2.head"] and isinstance(model[1], nn.Identity)


def test_swap_modules_factory_error_leaves_model_untouched() -> None:
    model = _nested()
    before = dict(model.named_modules())

    def factory(name: str, m: nn.Module) -> nn.Module:
        if name == "2.head":
            raise ValueError("cannot build")
        return nn.Identity()

    with pytest.raises(ValueError, match="cannot build"):
        swap_modules(model, lambda _n, m: isinstance(m, nn.Linear), factory)
    assert dict(model.named_modules()) == before


def test_swap_modules_never_the_root_and_replace_module_errors() -> None:
    lin = nn.Linear(2, 2)
    assert swap_modules(lin, lambda _n, _m: True, lambda _n, _m: nn.Identity()) == []
    with pytest.raises(ValueError, match="itself"):
        replace_module(lin, "", nn.Identity())
    model = _nested()
    with pytest.raises(AttributeError, match="no submodule 'missing'"):
        replace_module(model, "1.missing", nn.Identity())
    old = replace_module(model, "1.2", nn.Identity())
    assert isinstance(old, nn.Linear) and isinstance(model[1][2], nn.Identity)


def test_capture_input_output_both_and_record() -> None:
    model = _nested()
    x = torch.randn(5, 3)
    targets = {"1.0": model[1][0], "2.head": model[2].head}
    calls: list[tuple] = []
    with capture(targets, lambda *a: calls.append(a), record=True) as cap:
        y = model(x)
    assert isinstance(cap, Captured) and [c[0] for c in cap.calls] == ["1.0", "2.head"]
    assert cap.calls[0][1] is calls[0][1] and torch.equal(cap.calls[0][1], model[0](x))
    with capture(targets, what="output", record=True) as out:
        model(x)
    assert torch.equal(out.last()["2.head"][0], y)
    with capture(targets, what="both", record=True) as both:
        model(x)
    x_head, y_head = both.last()["2.head"]
    assert torch.equal(model[2].head(x_head), y_head) and torch.equal(y_head, y)
    assert _hooks(model) == 0
    with pytest.raises(ValueError, match="what must be one of"), capture(targets, what="grad"):
        pass


def test_capture_repeated_names_feed_one_key() -> None:
    model = _nested()
    seen: list[str] = []
    with capture([("lin", model[0]), ("lin", model[1][0])], lambda name, _x: seen.append(name)):
        model(torch.randn(2, 3))
    assert seen == ["lin", "lin"]


def test_capture_removes_hooks_on_exception_and_stop_forward() -> None:
    model = _nested()
    with pytest.raises(RuntimeError, match="boom"), capture({"0": model[0]}, record=True):
        raise RuntimeError("boom")
    assert _hooks(model) == 0

    def stop(_name: str, _x: torch.Tensor) -> None:
        raise StopForward

    after: list[int] = []
    with capture({"1.2": model[1][2]}, stop, record=True) as cap:
        model(torch.randn(2, 3))
        after.append(1)  # not reached: the forward ended at the hook
    assert after == [] and len(cap.calls) == 1 and _hooks(model) == 0

    def fail(_name: str, _x: torch.Tensor) -> None:
        raise KeyError("in a callback")

    with pytest.raises(KeyError), capture({"0": model[0]}, fail):
        model(torch.randn(2, 3))
    assert _hooks(model) == 0


def test_running_absmax_per_tensor_and_per_channel() -> None:
    ranges = RunningAbsmax(per_channel=["c"])
    a, b = torch.tensor([[1.0, -3.0], [2.0, 0.5]]), torch.tensor([[-4.0, 1.0]])
    for t in (a, b):
        ranges("t", t)
        ranges("c", t)
    assert ranges.values["t"] == 4.0
    assert ranges.values["c"].dtype == torch.float64 and ranges.values["c"].tolist() == [4.0, 3.0]
