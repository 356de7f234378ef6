"""Saving and resuming training snapshots (model and optimizer state).

A snapshot is the dict ``{'iteration', 'model_state', 'optimizer_state', **kwargs}`` written
by :func:`torch.save`. :func:`save` replaces the file atomically, so a crash mid-write never
destroys the previous snapshot.

Example:
    >>> save("out/epoch-3.pth", 3, net, optimizer, epoch=3)  # doctest: +SKIP
    >>> snapshot = resume("out/epoch-3.pth", net, optimizer)  # doctest: +SKIP
    >>> snapshot["epoch"]  # doctest: +SKIP
    3
"""

from __future__ import annotations

import os
import secrets
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["StateReport", "filter_state", "resume", "save", "unwrap"]

_RESERVED = ("iteration", "model_state", "optimizer_state")


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside (Distributed)DataParallel wrappers, whose state_dict keys have no
    ``module.`` prefix, so snapshots load the same with or without a wrapper."""
    parallel = (torch.nn.DataParallel, torch.nn.parallel.DistributedDataParallel)
    while isinstance(model, parallel):
        model = model.module
    return model


def save(
    path: str | os.PathLike,
    iteration: int,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    **kwargs: Any,
) -> None:
    """Write a snapshot of ``model`` and ``optimizer`` to ``path``, atomically.

    The snapshot goes to a temporary file in the same directory, is flushed and fsynced, and
    then renamed over ``path``: a crash at any point (even SIGKILL) leaves either the old
    file or the new one at ``path``. On an exception the temporary file is removed; a process
    killed mid-write leaves it behind (named ``.NAME.PID.RANDOM.tmp``).

    Args:
        path: file to write; its directory must exist.
        iteration: stored as ``snapshot['iteration']``.
        model: its ``state_dict()`` is stored, without (Distributed)DataParallel wrappers.
        optimizer: its ``state_dict()`` is stored; None stores None.
        **kwargs: further entries of the snapshot (epoch, metrics ...). Tensors and plain
            Python values keep the file loadable with torch.load(weights_only=True).

    Raises:
        ValueError: if kwargs uses one of the names save fills in itself.
        OSError: if the snapshot cannot be written (a full disk is errno ENOSPC); its
            ``filename`` is ``path``, and the file at ``path`` is unchanged.
    """
    clash = [k for k in kwargs if k in _RESERVED]
    if clash:
        raise ValueError(f"save fills in {clash} itself; pass other names")
    snapshot = {
        "iteration": iteration,
        "model_state": unwrap(model).state_dict(),
        "optimizer_state": None if optimizer is None else optimizer.state_dict(),
        **kwargs,
    }
    path = os.fspath(path)
    directory, name = os.path.split(os.path.abspath(path))
    # same directory: os.replace is atomic only within one file system
    tmp = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        # os.open with 0o666 honours the umask, unlike mkstemp's 0o600
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "wb") as f:
            torch.save(snapshot, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        error = _os_error(exc)
        if error is None:
            raise
        raise OSError(error.errno, f"{error.strerror or error}, writing snapshot", path) from exc
    _fsync_directory(directory)


def _os_error(exc: BaseException) -> OSError | None:
    """The OSError behind ``exc``, if any.

    torch.save reports a failed write of the file as RuntimeError('... unexpected pos ...'),
    and a write that fails at flush or close is an OSError without a file name: neither says
    which file, and only the first in the chain says why.
    """
    seen = set()
    link: BaseException | None = exc
    while isinstance(link, Exception) and id(link) not in seen:
        if isinstance(link, OSError):
            return link
        if not isinstance(link, RuntimeError):  # only torch's wrapper hides the OSError
            return None
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return None


def _fsync_directory(directory: str) -> None:
    # makes the rename itself durable across a power loss; not possible everywhere (Windows)
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@dataclass
class StateReport:
    """How a snapshot's state dict differs from a model's.

    Attributes:
        missing: names the model has and the snapshot lacks.
        unexpected: names the snapshot has and the model lacks.
        mismatched: ``{name: (model shape, snapshot shape)}`` for tensors of both whose
            shapes differ.
    """

    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)

    @property
    def clean(self) -> bool:
        """True if everything matches."""
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing from the snapshot: {self.missing}")
        if self.unexpected:
            parts.append(f"not in the model: {self.unexpected}")
        if self.mismatched:
            shapes = [
                f"{k} (model {list(m)}, snapshot {list(s)})"
                for k, (m, s) in self.mismatched.items()
            ]
            parts.append(f"different shapes: {', '.join(shapes)}")
        return "; ".join(parts) or "all names and shapes match"


def filter_state(
    own_state: Mapping[str, Any], state_dict: Mapping[str, Any]
) -> tuple[dict, StateReport]:
    """The entries of ``state_dict`` that fit ``own_state`` (same name, same shape).

    Args:
        own_state: the model's ``state_dict()``.
        state_dict: a snapshot's model state.

    Returns:
        ``(filtered_state, report)``: the fitting entries and a :class:`StateReport` of the
        missing, unexpected and shape-mismatched names.
    """
    report = StateReport()
    filtered = {}
    for name, value in state_dict.items():
        if name not in own_state:
            report.unexpected.append(name)
            continue
        own = own_state[name]
        if isinstance(own, torch.Tensor) and isinstance(value, torch.Tensor):
            if own.shape != value.shape:
                report.mismatched[name] = (tuple(own.shape), tuple(value.shape))
                continue
        filtered[name] = value
    report.missing = [name for name in own_state if name not in state_dict]
    return filtered, report


def _cut_size(path: str | os.PathLike) -> int | None:
    """The size of ``path`` if it is empty or a zip archive (torch.save's format) whose end
    is missing; None if it is whole, or not a file that can be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
            size = os.fstat(f.fileno()).st_size
        if len(head) < 4 or (head == b"PK\x03\x04" and not zipfile.is_zipfile(path)):
            return size
    except OSError:
        pass
    return None


def resume(
    path: str | os.PathLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    strict: bool = True,
    weights_only: bool = True,
) -> dict:
    """Load a snapshot written by :func:`save` into ``model`` and ``optimizer``.

    Args:
        path: the snapshot file.
        model: receives ``model_state`` ((Distributed)DataParallel wrappers are looked into).
        optimizer: receives ``optimizer_state`` if given and the snapshot has one.
        strict: if True, every parameter and buffer must match in name and shape. If False,
            what fits is loaded and the rest is listed in a warning; the optimizer state
            is then not restored, since it refers to parameters by position.
        weights_only: passed to :func:`torch.load`; False is needed for snapshots with
            arbitrary Python objects in their extra entries (only load files you trust).

    Returns:
        The snapshot dict (loaded to the CPU).

    Raises:
        ValueError: if strict and the model and snapshot differ (the message names the
            differing parameters and their shapes), if the file holds no ``model_state``,
            or if the file is incomplete (empty, or cut short before its end).
    """
    try:
        snapshot = torch.load(path, map_location="cpu", weights_only=weights_only)
    except Exception as exc:
        size = _cut_size(path)
        if size is None:
            raise
        # torch's own message for these is EOFError(''), EINVAL, a weights_only complaint
        # or a miniz error, none naming the file
        raise ValueError(
            f"snapshot {os.fspath(path)!r} is incomplete: the file ends after {size} bytes, "
            "before the snapshot does (cut short while it was written or copied)"
        ) from exc
    if not isinstance(snapshot, dict) or "model_state" not in snapshot:
        found = sorted(snapshot) if isinstance(snapshot, dict) else type(snapshot).__name__
        raise ValueError(f"{os.fspath(path)!r} is not a snapshot written by save (found {found})")
    model = unwrap(model)
    filtered, report = filter_state(model.state_dict(), snapshot["model_state"])
    if report.clean:
        model.load_state_dict(snapshot["model_state"])
    elif strict:
        raise ValueError(
            f"snapshot {os.fspath(path)!r} does not fit {type(model).__name__}: {report}"
        )
    else:
        model.load_state_dict(filtered, strict=False)
        warnings.warn(
            f"loaded {len(filtered)} entries of snapshot {os.fspath(path)!r} into "
            f"{type(model).__name__}, left out the rest: {report}"
            + ("; optimizer state not restored" if optimizer is not None else ""),
            stacklevel=2,
        )
        return snapshot
    if optimizer is not None and snapshot.get("optimizer_state") is not None:
        optimizer.load_state_dict(snapshot["optimizer_state"])
    return snapshot
