"""The Trainer: trains and validates a network on crumpets loaders, epoch by epoch.

Each step measures how long it waited for the loader, so the progress bar and the log
show at once whether data or the model is the bottleneck. Under torchrun (``WORLD_SIZE``
> 1) the network is wrapped in DistributedDataParallel, each rank's loader reads its own
shard, metrics are summed over ranks, and only rank 0 prints, logs and writes snapshots.

Loss and metric sums stay on the device; the host reads them only every ``log_every``
steps and at the end of an epoch, so a GPU's queue is never drained step by step.

As in crumpets 3, the ``train_policy`` is stepped after every iteration with the fractional
epoch and the epoch's running mean loss, ``train_policy.step(epoch + i / n, mean_loss)``, and
the ``val_policy`` after each validation with ``val_policy.step(epoch + 1, val_loss)``.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.distributed as dist

from crumpets.core.logging import JSONLogger, SilentLogger, make_printer
from crumpets.core.logging import print as tqdm_print
from crumpets.torch.utils import ParallelApply

from . import snapshot as snapshots
from ._epoch import LazyValues, LossWatch, postfix, summary
from .metrics import NoopMetric, sum_dtype
from .policy import NoopPolicy, ReduceLROnPlateau

__all__ = ["EVENTS", "Trainer"]

EVENTS = (
    "train_begin",
    "train_end",
    "train_pre_forward",
    "train_forward",
    "train_backward",
    "val_begin",
    "val_end",
    "val_pre_forward",
    "val_forward",
)
AMP = {None: None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _init_distributed() -> tuple[int, int]:
    """(rank, world_size); starts the process group under torchrun if nobody has."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _sum_over_ranks(t: torch.Tensor) -> torch.Tensor:
    t = t.clone()
    dist.all_reduce(t)
    return t


def _device_of(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def _check_policy(name: str, policy: Any) -> None:
    """Refuse, before training starts, a policy that cannot take ``step(epoch, loss)``."""
    if isinstance(policy, torch.optim.lr_scheduler.ReduceLROnPlateau) and not isinstance(
        policy, ReduceLROnPlateau
    ):
        raise TypeError(
            f"{name}: torch's ReduceLROnPlateau takes step(metrics, epoch), the Trainer calls "
            "step(epoch, loss) as crumpets 3 did: use crumpets.train.policy.ReduceLROnPlateau "
            "(same constructor)"
        )
    try:
        inspect.signature(policy.step).bind(1.0, 0.0)
    except (TypeError, ValueError, AttributeError) as exc:
        raise TypeError(
            f"{name}: the Trainer calls {name}.step(epoch, loss); {type(policy).__name__}.step "
            f"cannot take that ({exc}). crumpets.train.policy has the reference's policies; "
            "wrap other schedulers in a class with step(epoch=None, metrics=None)"
        ) from None


def _check_writable(folder: str) -> None:
    """Create and remove a file in ``folder``, so that a folder the log and snapshots cannot
    go to is an error before training, not at the first snapshot after an epoch. Only trying
    tells: root ignores permission bits, and a read-only mount or /proc refuses root too.

    Raises:
        OSError: with the folder as its ``filename``.
    """
    probe = os.path.join(folder, f".write-test.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    except OSError as exc:
        raise OSError(exc.errno, f"{exc.strerror}: cannot write in outdir", folder) from exc
    os.unlink(probe)


class Trainer:
    """Trains ``network`` one epoch, validates one epoch, and repeats.

    Args:
        network: takes and returns sample dicts (wrap plain nets in ``Unpacker``; for a
            multi-device loader wrap in ``ParallelApply``).
        optimizer: a torch optimizer over the network's parameters.
        loss: a crumpets.train.loss module (works on sample dicts).
        metric: a crumpets.train.metrics metric (or None).
        train_policy: a policy (crumpets.train.policy), or None. After every training
            iteration, once its gradients are computed and before the optimizer steps, the
            Trainer calls ``train_policy.step(epoch + i / n, loss)``: ``epoch`` counts from 0,
            ``i`` is the iteration within the epoch counted from 1, ``n`` the loader's
            iterations per epoch, so the first iteration gives ``1 / n`` and the last of epoch
            ``e`` gives ``e + 1``; ``loss`` is the epoch's mean loss so far, a 0-dim device
            tensor that the Trainer does not read (a policy that needs a number, like
            ReduceLROnPlateau, reads it: that one only at the last iteration of an epoch).
            This is what crumpets 3 did (its epochs count from 1, its loader's iterations
            from 1 over the whole run, hence the same numbers).
        val_policy: a policy stepped after each validation with
            ``val_policy.step(epoch + 1, val_loss)`` (the epochs trained so far, as crumpets 3
            numbered them, and the validation loss as a float), e.g. ReduceLROnPlateau; or
            None.
        train_iter: the training loader (entered by you: ``with train_iter:``).
        val_iter: the validation loader, or None.
        outdir: folder for the log (``log.jsonl``) and snapshots; created if needed, and
            checked by writing a file there (unless nothing is written: quiet, and no
            snapshots or not rank 0).
        val_loss: loss for validation; default ``loss``.
        val_metric: metric for validation; default ``metric``.
        snapshot_interval: epochs between snapshots; 0 or None for none.
        quiet: no progress bar, no log file.
        amp: None, 'bf16' or 'fp16': mixed precision with torch.autocast (fp16 with a
            gradient scaler).
        accumulate: batches whose gradients are summed before an optimizer step.
        log_every: steps between host reads of the loss and metrics: the check for a
            non-finite loss and the progress bar's values (also read at each epoch's end).

    Raises:
        OSError: here, if ``outdir`` cannot be created or written.
        FloatingPointError: from training or validation, at the first read after a
            non-finite loss; it names the phase, epoch and iteration of the first one.

    Unlike crumpets 3, the Trainer reads the device's values on the host only every
    ``log_every`` steps and at the end of an epoch, never per step, so that a GPU's queue
    keeps running ahead of the host. Hence:

    - a non-finite loss stops training at the next read, up to ``log_every`` steps later
      (those steps still run; the message names the first bad iteration);
    - the progress bar shows the epoch's mean loss so far, updated at those reads;
    - the ``loss`` given to the 'train_forward', 'train_backward' and 'val_forward' hooks
      is the mini-batch's loss as a detached 0-dim tensor, not a float (``float(loss)`` and
      ``f"{loss:.4f}"`` work, and read it), and ``metric`` is a read-only mapping that calls
      ``metric.value()`` when the hook first reads it, in that step (reading waits for the
      device; a hook that does not look costs nothing).

    Hooks (:meth:`add_hook`) fire as the reference's events say: 'train_pre_forward' and
    'val_pre_forward' before the forward pass, 'train_forward' and 'val_forward' after it
    (and after the metric's update), 'train_backward' after the backward pass, each with the
    mini-batch's ``metric``, ``loss`` and ``output``. At 'train_forward' this mini-batch has
    added nothing to the parameters' gradients yet (the Trainer sets them to None after each
    optimizer step); at 'train_backward' it has. A batch that the loader splits into
    mini-batches (``num_mini_batches``) fires them once per mini-batch.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        loss: torch.nn.Module,
        metric: Any,
        train_policy: Any,
        val_policy: Any,
        train_iter: Any,
        val_iter: Any,
        outdir: str | os.PathLike[str],
        val_loss: torch.nn.Module | None = None,
        val_metric: Any = None,
        snapshot_interval: int | None = 1,
        quiet: bool = False,
        *,
        amp: str | None = None,
        accumulate: int = 1,
        log_every: int = 20,
    ):
        if amp not in AMP:
            raise ValueError(f"amp must be one of {sorted(AMP, key=str)}, got {amp!r}")
        if int(accumulate) < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        if int(log_every) < 1:
            raise ValueError(f"log_every must be >= 1, got {log_every}")
        for name, policy in (("train_policy", train_policy), ("val_policy", val_policy)):
            if policy is not None:
                _check_policy(name, policy)
        self.rank, self.world_size = _init_distributed()
        if self.world_size > 1 and not isinstance(
            network, torch.nn.parallel.DistributedDataParallel
        ):
            device = _device_of(network)
            ids = [device.index] if device.type == "cuda" else None
            network = torch.nn.parallel.DistributedDataParallel(network, device_ids=ids)
        self.network = network
        self.optimizer = optimizer
        self.loss = loss
        self.metric = metric if metric is not None else NoopMetric()
        self.train_policy = train_policy if train_policy is not None else NoopPolicy()
        self.val_policy = val_policy if val_policy is not None else NoopPolicy()
        self.train_iter = train_iter
        self.val_iter = val_iter
        self.val_loss = val_loss if val_loss is not None else loss
        self.val_metric = val_metric if val_metric is not None else self.metric
        self.snapshot_interval = snapshot_interval or 0
        self.quiet = quiet or self.rank != 0
        self.outdir = os.fspath(outdir)
        self.amp = amp
        self.accumulate = int(accumulate)
        self.log_every = int(log_every)
        self.device_type = _device_of(network).type
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=amp == "fp16")
        self.hooks: dict[str, list[Callable]] = {name: [] for name in EVENTS}
        self.state: dict[str, Any] = {"epoch": 0, "iteration": 0, "history": []}
        writes = not self.quiet or (self.snapshot_interval and self.rank == 0)
        if writes:
            os.makedirs(self.outdir, exist_ok=True)
            _check_writable(self.outdir)
        self.logger = (
            SilentLogger()
            if self.quiet
            else JSONLogger("crumpets.train", os.path.join(self.outdir, "log.jsonl"))
        )
        self.last_snapshot: str | None = None

    # -- hooks --------------------------------------------------------------------------
    def add_hook(self, name: str, fun: Callable) -> None:
        """Call ``fun(state, **kwargs)`` at event ``name`` (one of :data:`EVENTS`)."""
        if name not in self.hooks:
            raise ValueError(f"unknown hook event {name!r}; events: {list(EVENTS)}")
        self.hooks[name].append(fun)

    def remove_hook(self, name: str, fun: Callable) -> None:
        """Remove a hook added with :meth:`add_hook`."""
        if name not in self.hooks:
            raise ValueError(f"unknown hook event {name!r}; events: {list(EVENTS)}")
        self.hooks[name].remove(fun)

    def _fire(self, name: str, **kwargs: Any) -> None:
        for fun in self.hooks[name]:
            fun(self.state, **kwargs)

    # -- one step -----------------------------------------------------------------------
    def _batch(
        self, mini_batches: list, loss_fn: Any, metric: Any, phase: str
    ) -> tuple[list[torch.Tensor], int, Mapping]:
        """One batch, mini-batch by mini-batch: forward, metric update, ``{phase}_forward``,
        and in training backward and ``train_backward``.

        Each mini-batch's backward frees its graph before the next one's forward, so a batch
        that the loader splits (``num_mini_batches``) takes the memory of one mini-batch;
        the hooks therefore fire once per mini-batch, with its output and loss.

        Returns:
            The mini-batches' losses (detached), the batch's sample count, and the metric's
            values for the progress bar.
        """
        parts = [mini_batches] if isinstance(self._plain_net, ParallelApply) else mini_batches
        update = getattr(metric, "update", None)  # None: a duck-typed metric, called instead
        losses: list[torch.Tensor] = []
        samples = 0
        values: Mapping = {}
        for sample in parts:
            self._fire(f"{phase}_pre_forward", sample=sample)
            autocast = torch.autocast(self.device_type, AMP[self.amp], enabled=self.amp is not None)
            with autocast:
                output = self.network(sample)
                loss = loss_fn(output)
            with torch.no_grad():
                if update is not None:
                    update(output)
                    values = LazyValues(metric)
                else:
                    values = metric(output)
            samples += len(next(v for v in output.values() if isinstance(v, torch.Tensor)))
            losses.append(loss.detach())
            self._fire(f"{phase}_forward", metric=values, loss=losses[-1], output=output)
            if phase == "train":
                self.scaler.scale(loss / (len(parts) * self.accumulate)).backward()
                self._fire("train_backward", metric=values, loss=losses[-1], output=output)
        return losses, samples, values

    def _read(self, watch: LossWatch, phase: str) -> float:
        """The epoch's loss sum so far, read on the host.

        Raises:
            FloatingPointError: if a loss since the start of the epoch was not finite.
        """
        total, iteration, loss = watch.read()
        if iteration is not None:
            raise FloatingPointError(
                f"{phase} loss is {loss} at epoch {self.state['epoch']}, iteration "
                f"{iteration}; training stopped. Last good snapshot: "
                f"{self.last_snapshot or 'none yet'}"
            )
        return total

    @property
    def _plain_net(self) -> torch.nn.Module:
        net = self.network
        return net.module if isinstance(net, torch.nn.parallel.DistributedDataParallel) else net

    def _epoch(self, phase: str, loader: Any, loss_fn: Any, metric: Any) -> dict:
        train = phase == "train"
        self.network.train(train)
        metric.reset()
        watch = LossWatch()  # sum of batch losses, over `batches`
        loss_sum, read_at = 0.0, 0  # as of the last read, after `read_at` batches
        batches = samples = 0
        waited = computed = 0.0
        values: Mapping = {}
        self._fire(f"{phase}_begin")
        bar = (
            None
            if self.quiet
            else make_printer(total=len(loader), desc=f"{phase} {self.state['epoch']}")
        )
        grad = contextlib.nullcontext() if train else torch.no_grad()
        steps_policy = train and not isinstance(self.train_policy, NoopPolicy)
        with grad:
            t_ready = time.perf_counter()
            for step, (_, mini_batches) in enumerate(loader):
                t_data = time.perf_counter()
                waited += t_data - t_ready
                losses, n, values = self._batch(mini_batches, loss_fn, metric, phase)
                watch.add(losses, self.state["iteration"])
                samples += n
                batches += 1
                if train:
                    if steps_policy:  # before the optimizer steps, as crumpets 3 did
                        self.train_policy.step(
                            self.state["epoch"] + (step + 1) / len(loader),
                            self._mean_loss(watch, batches, last=step + 1 == len(loader)),
                        )
                    if (step + 1) % self.accumulate == 0 or step + 1 == len(loader):
                        self.scaler.step(self.optimizer)
                        self.scaler.update()
                        self.optimizer.zero_grad(set_to_none=True)
                    self.state["iteration"] += 1
                if batches % self.log_every == 0:
                    loss_sum, read_at = self._read(watch, phase), batches
                    if bar is not None:
                        postfix(bar, loss_sum / batches, waited, computed, values)
                t_ready = time.perf_counter()
                computed += t_ready - t_data
                if bar is not None:
                    bar.update(1)
        if read_at != batches:
            loss_sum = self._read(watch, phase)
        result = self._reduce(metric, loss_sum, batches, samples)
        if bar is not None:
            metrics = {k: v for k, v in result.items() if k != "loss"}
            postfix(bar, result["loss"], waited, computed, metrics)
            bar.close()
        elapsed = waited + computed
        result.update(
            {
                "phase": phase,
                "epoch": self.state["epoch"],
                "data_wait": waited / elapsed if elapsed else 0.0,
                "samples_per_s": result.pop("samples") / elapsed if elapsed else 0.0,
            }
        )
        self._fire(f"{phase}_end")
        return result

    def _mean_loss(self, watch: LossWatch, batches: int, last: bool) -> torch.Tensor:
        """The epoch's mean batch loss so far, a 0-dim device tensor (nothing is read).

        At an epoch's last iteration under DistributedDataParallel it is the mean over all
        ranks, so that a policy acting on it (ReduceLROnPlateau) sets the same lr on each.
        """
        assert watch.total is not None
        if last and self.world_size > 1:
            count = torch.full_like(watch.total, float(batches))
            total, count = _sum_over_ranks(torch.stack([watch.total, count]))
            return total / count
        return watch.total / batches

    def _reduce(self, metric: Any, loss_sum: float, batches: int, samples: int) -> dict:
        if self.world_size > 1:
            metric.all_reduce(_sum_over_ranks)
            # on the training device: NCCL reduces GPU tensors only
            device = _device_of(self.network)
            local = [loss_sum, batches, samples]
            sums = _sum_over_ranks(torch.tensor(local, dtype=sum_dtype(device), device=device))
            loss_sum, batches, samples = sums.tolist()
        loss = loss_sum / batches if batches else math.nan
        # plain values: the history goes into JSON logs and weights-only snapshots
        values = {k: v.tolist() if hasattr(v, "tolist") else v for k, v in metric.value().items()}
        return {"loss": loss, **values, "samples": int(samples)}

    def train_epoch(self) -> dict:
        """Train one epoch (``state['epoch']``), stepping ``train_policy`` after every
        iteration; returns the loss, metrics, data wait fraction and samples/s."""
        return self._epoch("train", self.train_iter, self.loss, self.metric)

    def validate_epoch(self, epoch: int) -> dict:
        """Validate once after training epoch ``epoch`` (counted from 0), then call
        ``val_policy.step(epoch + 1, val_loss)``; returns the loss and metrics."""
        self.state["epoch"] = epoch
        result = self._epoch("val", self.val_iter, self.val_loss, self.val_metric)
        self.val_policy.step(epoch + 1, result["loss"])
        return result

    # -- the loop -----------------------------------------------------------------------
    def print_info(self, epoch: int) -> None:
        """Print and log the epoch and the current learning rates."""
        lrs = [group["lr"] for group in self.optimizer.param_groups]
        self.logger.info(event="epoch", epoch=epoch, lr=lrs)
        if not self.quiet:
            tqdm_print(f"epoch {epoch}: lr {', '.join(f'{lr:.3g}' for lr in lrs)}")

    def train(self, num_epochs: int, start_epoch: int = 0) -> list[dict]:
        """Train epochs ``start_epoch`` .. ``num_epochs - 1``, validating after each.

        Returns:
            The history: one dict per epoch with 'train' and 'val' results.
        """
        for epoch in range(start_epoch, num_epochs):
            self.state["epoch"] = epoch
            self.print_info(epoch)
            record: dict[str, Any] = {"epoch": epoch, "train": self.train_epoch()}
            self.logger.info(**record["train"])
            if self.val_iter is not None:
                record["val"] = self.validate_epoch(epoch)
                self.logger.info(**record["val"])
            self.state["history"].append(record)
            if not self.quiet:
                tqdm_print(summary(record))
            if self.snapshot_interval and (epoch + 1) % self.snapshot_interval == 0:
                self.snapshot(epoch)
        return self.state["history"]

    # -- snapshots ----------------------------------------------------------------------
    def snapshot(self, epoch: int) -> str | None:
        """Write ``outdir/epoch_NNNN.pth`` atomically (rank 0 only); returns its path."""
        if self.rank != 0:
            return None
        path = os.path.join(self.outdir, f"epoch_{epoch:04d}.pth")
        loader_state = getattr(self.train_iter, "state_dict", None)
        snapshots.save(
            path,
            self.state["iteration"],
            self._plain_net,
            self.optimizer,
            epoch=epoch,
            train_policy=self.train_policy.state_dict(),
            val_policy=self.val_policy.state_dict(),
            scaler=self.scaler.state_dict(),
            loader=loader_state() if loader_state else None,
            torch_rng=torch.get_rng_state(),
            history=self.state["history"],
        )
        self.last_snapshot = path
        return path

    def resume(self, path: str | os.PathLike[str], strict: bool = True) -> int:
        """Load a snapshot written by :meth:`snapshot`; returns the epoch to start at."""
        snap = snapshots.resume(path, self._plain_net, self.optimizer, strict=strict)
        self.train_policy.load_state_dict(snap["train_policy"])
        self.val_policy.load_state_dict(snap["val_policy"])
        self.scaler.load_state_dict(snap["scaler"])
        if snap.get("loader") is not None and hasattr(self.train_iter, "load_state_dict"):
            self.train_iter.load_state_dict(snap["loader"])
        torch.set_rng_state(snap["torch_rng"])
        self.state["iteration"] = snap["iteration"]
        self.state["history"] = list(snap.get("history", []))
        self.last_snapshot = os.fspath(path)
        return snap["epoch"] + 1
