"""Every concrete integer-GEMM backend as a pytest parameter; one this machine cannot run is skipped with the
reason (the missing CPU feature, or the kernel that is not shipped), never silently dropped."""

from __future__ import annotations

import pytest

from lowbit.ops import backends


def backend_params(include_unshipped: bool = True) -> list:
    """``pytest.param`` per concrete backend, skip-marked with the reason where it cannot run here."""
    params = []
    for name in backends.CONCRETE:
        reason = backends._why_not(name)
        if reason and not include_unshipped:
            continue
        marks = [pytest.mark.skip(reason=f"{name}: {reason}")] if reason else []
        params.append(pytest.param(name, id=name, marks=marks))
    return params


BACKENDS = backend_params()
NATIVE_ISAS = [p for p in BACKENDS if p.values[0] in backends.NATIVE_ISAS]
