"""Counting the torch calls a batch takes: the aten ops with no parent op that one call of a
function issues (each is at least one kernel launch on a GPU)."""

from __future__ import annotations

from collections.abc import Callable

from torch.profiler import ProfilerActivity, profile


def top_level_ops(fn: Callable[[], object], ignore: tuple[str, ...] = ()) -> list[str]:
    """The top-level aten ops of the second call of ``fn`` (the first makes the caches:
    tables per device are made once, not per batch), less those named in ``ignore``."""
    fn()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return [
        e.name
        for e in prof.events()
        if e.name.startswith("aten::") and e.cpu_parent is None and e.name not in ignore
    ]
