"""Module surgery shared by every workflow: swapping submodules, and capturing submodules' tensors by hooks.

* :func:`swap_modules` — replace the submodules a predicate picks by what a factory builds (training's
  ``convert``, PTQ's ``quantize`` and the sequential GPTQ pass); :func:`replace_module` sets one by name.
* :func:`capture` — a context manager that hands each chosen module's input (or output, or both) to a
  callback on every call, and/or records them, through forward hooks removed on exit (also on an exception).
  A callback may raise :class:`StopForward` to end the forward early (the context swallows it).
  :class:`RunningAbsmax` is a ready-made callback keeping a running absmax per key (integer calibration).

Plain torch: nothing here imports the rest of lowbit.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

CAPTURE_WHAT = ("input", "output", "both")


def replace_module(model: nn.Module, name: str, module: nn.Module) -> nn.Module:
    """Set the submodule of ``model`` called ``name`` (dotted, e.g. ``"encoder.layer.0.dense"``) to
    ``module``; returns the module it replaces. ``name`` must name an existing submodule (``""``, the model
    itself, cannot be replaced in place: ``ValueError``)."""
    if not name:
        raise ValueError("the model itself cannot be replaced in place; wrap it in a container first")
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    old = getattr(parent, attr, None)
    if not isinstance(old, nn.Module):
        raise AttributeError(f"{type(parent).__name__} has no submodule {attr!r} (looking for {name!r})")
    setattr(parent, attr, module)
    return old


def swap_modules(
    model: nn.Module,
    predicate: Callable[[str, nn.Module], bool],
    factory: Callable[[str, nn.Module], nn.Module],
) -> list[str]:
    """Replace every submodule ``m`` called ``name`` with ``predicate(name, m)`` by ``factory(name, m)``.

    Submodules are visited in ``model.named_modules()`` order (registration order, each module once); the
    submodules of a chosen one are not visited (it is replaced whole). Every replacement is built before
    the first is set, so a factory that raises leaves the model untouched. Returns the replaced names in
    that order. The model itself (name ``""``) is never chosen.
    """
    chosen: list[tuple[str, nn.Module]] = []
    for name, module in model.named_modules():
        if not name or any(name.startswith(f"{c}.") for c, _ in chosen):
            continue
        if predicate(name, module):
            chosen.append((name, module))
    built = [(name, factory(name, module)) for name, module in chosen]
    for name, new in built:
        replace_module(model, name, new)
    return [name for name, _ in built]


class StopForward(Exception):
    """Raised by a :func:`capture` callback once it has what it needs: the rest of the forward is skipped
    (``capture`` swallows it, so the ``with`` block ends at the model call)."""


@dataclass
class Captured:
    """What :func:`capture` recorded (``record=True``): one tuple per call, in call order —
    ``(name, input)``, ``(name, output)`` or ``(name, input, output)`` per ``what``."""

    calls: list[tuple] = field(default_factory=list)

    def last(self) -> dict[str, tuple]:
        """Per name, the tensors of its last call (without the name)."""
        return {call[0]: call[1:] for call in self.calls}


@contextmanager
def capture(
    targets: Mapping[str, nn.Module] | Iterable[tuple[str, nn.Module]],
    fn: Callable[..., None] | None = None,
    *,
    what: str = "input",
    record: bool = False,
) -> Iterator[Captured]:
    """While the ``with`` block runs, each call of a target module hands its tensors to ``fn`` / records them.

    ``targets``: ``{name: module}`` or ``(name, module)`` pairs (a name may repeat: several modules feeding
    one key). ``what``: ``"input"`` — the call's first positional argument, seen before the forward (a
    forward pre-hook); ``"output"`` — the module's output; ``"both"`` — input and output, after the forward.
    ``fn(name, tensor)`` (``fn(name, input, output)`` for ``"both"``) runs on every call; it may raise
    :class:`StopForward` to end the forward there. ``record=True``: the tensors are kept (not copied) in the
    yielded :class:`Captured`. Every hook is removed when the block ends, normally or by an exception.
    """
    if what not in CAPTURE_WHAT:
        raise ValueError(f"what must be one of {CAPTURE_WHAT}, got {what!r}")
    pairs = list(targets.items()) if isinstance(targets, Mapping) else list(targets)
    captured = Captured()

    def handle(name: str, *tensors: torch.Tensor) -> None:
        if record:
            captured.calls.append((name, *tensors))
        if fn is not None:
            fn(name, *tensors)

    def make(name: str) -> Callable:
        if what == "input":
            return lambda _mod, args: handle(name, args[0])
        if what == "output":
            return lambda _mod, _args, out: handle(name, out)
        return lambda _mod, args, out: handle(name, args[0], out)

    handles = []
    try:
        for name, module in pairs:
            if what == "input":
                handles.append(module.register_forward_pre_hook(make(name)))
            else:
                handles.append(module.register_forward_hook(make(name)))
        yield captured
    except StopForward:
        pass
    finally:
        for h in handles:
            h.remove()


class RunningAbsmax:
    """A :func:`capture` callback keeping the running absmax of the tensors seen under each key: a float
    (over the whole tensor) or, for keys in ``per_channel``, a float64 ``(C,)`` tensor over every dim but
    the last. ``values``: key → absmax so far."""

    def __init__(self, per_channel: Collection[str] = ()) -> None:
        self.per_channel = frozenset(per_channel)
        self.values: dict[str, float | torch.Tensor] = {}

    def __call__(self, key: str, t: torch.Tensor) -> None:
        t = t.detach().abs()
        if key in self.per_channel:
            v = t.reshape(-1, t.shape[-1]).amax(0).to(torch.float64)
            old = self.values.get(key)
            self.values[key] = v if old is None else torch.maximum(old, v)
        else:
            self.values[key] = max(self.values.get(key, 0.0), float(t.max()))
