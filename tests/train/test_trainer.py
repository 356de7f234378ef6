"""The Trainer on real digits: hooks, logs, resume, NaN, mixed precision."""

from __future__ import annotations

import json
import math
import os
import re

import pytest
import torch
from _host_reads import count_host_reads
from _train_data import DigitWorker, TinyNet, digit_samples

from crumpets.torch import TorchTurboDataLoader
from crumpets.train import EVENTS, Trainer
from crumpets.train.loss import CrossEntropyLoss
from crumpets.train.metrics import AccuracyMetric
from crumpets.train.policy import NoopPolicy, PolyPolicy, ReduceLROnPlateau

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def make(outdir, epochs=4, seed=0, quiet=True, mini_batches=1, **kwargs):
    torch.manual_seed(seed)
    data = digit_samples(600)
    train = TorchTurboDataLoader(
        data[:480],
        32,
        DigitWorker(),
        2,
        device="cpu",
        num_mini_batches=mini_batches,
        shuffle=True,
        seed=seed,
    )
    val = TorchTurboDataLoader(data[480:], 60, DigitWorker(), 1, device="cpu", seed=seed)
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    trainer = Trainer(
        net,
        opt,
        CrossEntropyLoss(target_key="label"),
        AccuracyMetric(),
        PolyPolicy(opt, epochs),
        None,
        train,
        val,
        outdir,
        quiet=quiet,
        **kwargs,
    )
    return trainer, train, val


def test_training_learns_and_logs(tmp_path):
    trainer, train, val = make(tmp_path, quiet=False)
    with train, val:
        history = trainer.train(4)
    assert history[-1]["val"]["top1_accuracy"] > 0.75  # from 10% at random
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]
    lines = [json.loads(line) for line in open(tmp_path / "log.jsonl")]
    epochs = [line for line in lines if line.get("phase") == "train"]
    assert len(epochs) == 4
    assert 0 <= epochs[0]["data_wait"] <= 1 and epochs[0]["samples_per_s"] > 0
    assert sorted(p.name for p in tmp_path.glob("*.pth")) == [
        f"epoch_{e:04d}.pth" for e in range(4)
    ]


def test_hooks_fire_in_order(tmp_path):
    trainer, train, val = make(tmp_path, snapshot_interval=0)
    seen = []
    for name in EVENTS:
        trainer.add_hook(name, lambda state, _n=name, **kw: seen.append((_n, sorted(kw))))
    with pytest.raises(ValueError, match="train_begin"):
        trainer.add_hook("after_lunch", print)
    with train, val:
        trainer.train(1)
    names = [n for n, _ in seen]
    steps = len(train)
    assert names == (
        ["train_begin"]
        + ["train_pre_forward", "train_forward", "train_backward"] * steps
        + ["train_end", "val_begin"]
        + ["val_pre_forward", "val_forward"] * len(val)
        + ["val_end"]
    )
    assert dict(seen)["train_forward"] == ["loss", "metric", "output"]
    assert dict(seen)["train_backward"] == ["loss", "metric", "output"]
    assert dict(seen)["train_pre_forward"] == ["sample"]
    fun = trainer.hooks["val_end"][0]
    trainer.remove_hook("val_end", fun)
    assert trainer.hooks["val_end"] == []


def _grads(params):
    return [None if p.grad is None else p.grad.clone() for p in params]


def _same(a, b):
    return all(
        x is None and y is None or x is not None and y is not None and torch.equal(x, y)
        for x, y in zip(a, b)
    )


@pytest.mark.parametrize(("accumulate", "mini_batches"), [(1, 1), (2, 1), (1, 2)])
def test_train_forward_fires_before_the_backward_and_train_backward_after_it(
    tmp_path, accumulate, mini_batches
):
    trainer, train, _ = make(
        tmp_path, snapshot_interval=0, accumulate=accumulate, mini_batches=mini_batches
    )
    params = list(trainer.network.parameters())
    seen = []
    for event in ("train_pre_forward", "train_forward", "train_backward"):
        trainer.add_hook(event, lambda state, _e=event, **kw: seen.append((_e, _grads(params))))
    with train:
        trainer.train_epoch()
    # per mini-batch: its forward, then its backward (a mini-batch's graph is freed before
    # the next one's forward, so a batch split by the loader takes less memory)
    events = [event for event, _ in seen]
    assert events == ["train_pre_forward", "train_forward", "train_backward"] * (
        len(train) * mini_batches
    )
    for i in range(0, len(seen), 3):
        (_, before), (_, forward), (_, backward) = seen[i : i + 3]
        assert _same(forward, before)  # the forward computed no gradient
        assert all(g is not None for g in backward)
        assert not any(
            g is not None and torch.equal(g, h) for g, h in zip(forward, backward)
        )  # the backward added this mini-batch's gradient to every parameter
        step, part = divmod(i // 3, mini_batches)
        if step % accumulate == 0 and part == 0:  # the optimizer step set grads to None
            assert all(g is None for g in forward)


def test_resume_after_epoch_k_gives_the_same_weights(tmp_path):
    straight, train, val = make(tmp_path / "a")
    with train, val:
        straight.train(4)
    first, train, val = make(tmp_path / "b")
    with train, val:
        first.train(2)  # as if the run died after epoch 1's snapshot
    resumed, train, val = make(tmp_path / "b", seed=99)  # seeds come back from the snapshot
    start = resumed.resume(tmp_path / "b" / "epoch_0001.pth")
    assert start == 2
    with train, val:
        resumed.train(4, start_epoch=start)
    for a, b in zip(straight.network.state_dict().values(), resumed.network.state_dict().values()):
        assert torch.equal(a, b)


def test_nan_loss_stops_with_the_iteration_and_keeps_the_snapshot(tmp_path):
    trainer, train, val = make(tmp_path)

    def poison(state, sample):
        if state["epoch"] == 1 and state["iteration"] == 20:
            sample["image"][:] = float("nan")

    trainer.add_hook("train_pre_forward", poison)
    with train, val, pytest.raises(FloatingPointError, match="iteration 20") as info:
        trainer.train(4)
    assert "epoch_0000.pth" in str(info.value)
    assert [p.name for p in tmp_path.glob("*.pth")] == ["epoch_0000.pth"]
    torch.load(tmp_path / "epoch_0000.pth", weights_only=False)  # still loadable


@pytest.mark.parametrize("amp", ["bf16"])
def test_mixed_precision_and_accumulation(tmp_path, amp):
    trainer, train, val = make(tmp_path, amp=amp, accumulate=2, snapshot_interval=0)
    dtypes, steps = [], []
    body = trainer.network.body
    body.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    trainer.optimizer.register_step_post_hook(lambda optimizer, args, kwargs: steps.append(1))
    with train, val:
        history = trainer.train(3)
    assert history[-1]["val"]["top1_accuracy"] > 0.5  # learns: chance is 0.1
    # the forward ran under autocast, and the optimizer stepped once per 2 batches
    # (and at the end of each epoch: 15 batches of 32 per epoch here)
    assert set(dtypes) == {AMP_DTYPES[amp]}
    assert len(steps) == 3 * math.ceil(len(train) / 2)
    with pytest.raises(ValueError, match="amp"):
        make(tmp_path, amp="fp8")


def test_array_metrics_survive_logs_and_resume(tmp_path):
    from crumpets.train.metrics import CombinedMetric, ConfusionMatrix

    trainer, train, val = make(tmp_path, quiet=False)
    both = CombinedMetric([AccuracyMetric(), ConfusionMatrix(10, target_key="label")])
    trainer.metric = trainer.val_metric = both
    with train, val:
        history = trainer.train(1)
    matrix = history[0]["val"]["confusion_matrix"]
    assert isinstance(matrix, list) and sum(map(sum, matrix)) == 120
    assert json.loads(open(tmp_path / "log.jsonl").readlines()[-1])["confusion_matrix"] == matrix
    again, train, val = make(tmp_path)
    assert again.resume(tmp_path / "epoch_0000.pth") == 1
    assert again.state["history"][0]["val"]["confusion_matrix"] == matrix


@pytest.mark.parametrize("quiet", [True, False])
def test_an_epoch_reads_the_host_only_at_log_points_and_gets_the_same_numbers(tmp_path, quiet):
    batch, data = 16, digit_samples(100 * 16)

    def start():
        torch.manual_seed(0)
        net = TinyNet()
        loader = TorchTurboDataLoader(data, batch, DigitWorker(), 1, device="cpu", seed=0)
        return net, torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9), loader

    net, opt, train = start()
    loss, metric = CrossEntropyLoss(target_key="label"), AccuracyMetric()
    args = (None, None, train, None, tmp_path)
    trainer = Trainer(net, opt, loss, metric, *args, quiet=quiet, snapshot_interval=0)
    with train, count_host_reads() as reads:
        result = trainer.train_epoch()
    assert len(train) == 100
    # every log_every (default 20) steps and at the end: 6 reads quiet, 11 with the bar;
    # reading per step (loss, non-finite check, metric sums and value) made 502
    assert sum(reads.values()) <= 30, reads.most_common()

    # the same epoch as a straightforward loop
    net, opt, train = start()
    net.train()
    loss_sum, correct, count = 0.0, 0, 0
    with train:
        for _, (sample,) in train:
            output = net(sample)
            step_loss = loss(output)
            step_loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            loss_sum += step_loss.item()
            hits = output["output"].argmax(1) == sample["label"][:, 0]
            correct, count = correct + int(hits.sum()), count + len(hits)
    assert result["loss"] == loss_sum / 100
    assert result["top1_accuracy"] == correct / count
    for a, b in zip(trainer.network.parameters(), net.parameters()):
        assert torch.equal(a, b)


def test_hooks_get_the_loss_tensor_and_metric_values_when_they_look(tmp_path):
    trainer, train, val = make(tmp_path, snapshot_interval=0, log_every=4)
    seen = []

    def look(state, metric, loss, output):
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
        seen.append((float(loss), f"{loss:.4f}", dict(metric)))

    trainer.add_hook("train_forward", look)
    trainer.add_hook("val_forward", lambda state, **kwargs: None)  # looks at nothing
    with train, val:
        (record,) = trainer.train(1)
    assert len(seen) == len(train)
    assert record["train"]["loss"] == sum(loss for loss, _, _ in seen) / len(train)
    assert seen[-1][1] == f"{seen[-1][0]:.4f}"
    assert seen[-1][2] == {"top1_accuracy": record["train"]["top1_accuracy"]}
    with pytest.raises(ValueError, match="log_every"):
        make(tmp_path, log_every=0)


def test_a_metric_without_update_is_called_per_batch(tmp_path):
    class Batches:  # duck-typed: no update(), so calling it is the update
        def reset(self):
            self.n = 0

        def __call__(self, sample):
            self.n += 1
            return self.value()

        def value(self):
            return {"batches": float(self.n)}

    trainer, train, val = make(tmp_path, snapshot_interval=0)
    trainer.metric = trainer.val_metric = Batches()
    metrics = []
    trainer.add_hook("train_forward", lambda state, metric, **_: metrics.append(metric))
    with train, val:
        (record,) = trainer.train(1)
    assert record["train"]["batches"] == len(train) and record["val"]["batches"] == len(val)
    assert metrics[:2] == [{"batches": 1.0}, {"batches": 2.0}]


class RecordingPoly(PolyPolicy):
    """PolyPolicy that records each step's (epoch, metrics) and the lr it set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.calls = []  # after __init__: its own first step is not the Trainer's

    def step(self, epoch=None, metrics=None):
        super().step(epoch, metrics)
        if hasattr(self, "calls"):
            self.calls.append((epoch, metrics, self.get_last_lr()[0]))


class RecordingNoop(NoopPolicy):
    def __init__(self):
        self.calls = []

    def step(self, *args, **kwargs):
        self.calls.append((args, kwargs))


def test_policies_step_as_the_reference_train_every_iteration_val_every_epoch(tmp_path):
    trainer, train, val = make(tmp_path, snapshot_interval=0)
    opt = trainer.optimizer
    trainer.train_policy = policy = RecordingPoly(opt, 2, 1)
    trainer.val_policy = val_policy = RecordingNoop()
    batch_losses, lr_at_update = [], []
    trainer.add_hook("train_forward", lambda state, loss, **_: batch_losses.append(float(loss)))
    update = opt.step

    def recording_update(*args, **kwargs):
        lr_at_update.append(opt.param_groups[0]["lr"])
        return update(*args, **kwargs)

    opt.step = recording_update
    with train, val:
        history = trainer.train(2)

    n = len(train)
    epochs = [epoch for epoch, _, _ in policy.calls]
    # one step per iteration: epoch + i / n, i counted from 1 within the epoch
    assert epochs == [e + i / n for e in range(2) for i in range(1, n + 1)]
    assert epochs[0] == 1 / n and epochs[n - 1] == 1.0 and epochs[-1] == 2.0
    # the loss each time: the epoch's running mean, a 0-dim tensor the Trainer did not read
    for k, (_, loss, _) in enumerate(policy.calls):
        assert isinstance(loss, torch.Tensor) and loss.dim() == 0 and not loss.requires_grad
        epoch_so_far = batch_losses[k - k % n : k + 1]
        assert float(loss) == pytest.approx(sum(epoch_so_far) / len(epoch_so_far), rel=1e-12)
    assert float(policy.calls[n - 1][1]) == pytest.approx(history[0]["train"]["loss"])
    # the policy steps before the optimizer: each update uses the lr of its fractional epoch
    assert lr_at_update == [lr for _, _, lr in policy.calls]
    assert lr_at_update == pytest.approx([0.1 * (1 - e / 2) for e in epochs])
    # the val policy: (epochs trained so far, validation loss) after each validation
    assert val_policy.calls == [((e + 1, history[e]["val"]["loss"]), {}) for e in range(2)]


@pytest.mark.parametrize(
    ("make_policy", "policy_reads"),
    [
        (lambda opt: PolyPolicy(opt, 2, 1), 0),
        (lambda opt: ReduceLROnPlateau(opt), 1),  # the epoch's mean loss, at its last step
    ],
)
def test_a_train_policy_adds_no_host_reads_per_step(tmp_path, make_policy, policy_reads):
    torch.manual_seed(0)
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    train = TorchTurboDataLoader(digit_samples(40 * 16), 16, DigitWorker(), 1, device="cpu")
    args = (AccuracyMetric(), make_policy(opt), None, train, None, tmp_path)
    trainer = Trainer(net, opt, CrossEntropyLoss(target_key="label"), *args, quiet=True)
    with train, count_host_reads() as reads:
        trainer.train_epoch()
    assert len(train) == 40
    by_policy = sum(n for where, n in reads.items() if "policy.py" in where or "lr_sch" in where)
    assert by_policy == policy_reads, reads.most_common()
    assert sum(reads.values()) <= 10, reads.most_common()  # 2 log points + the epoch's end


def test_torch_schedulers_with_another_step_signature_are_refused(tmp_path):
    net = TinyNet()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    loss = CrossEntropyLoss(target_key="label")
    torch_plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)
    with pytest.raises(TypeError, match="crumpets.train.policy.ReduceLROnPlateau"):
        Trainer(net, opt, loss, None, None, torch_plateau, None, None, tmp_path, quiet=True)
    step_lr = torch.optim.lr_scheduler.StepLR(opt, 3)
    with pytest.raises(TypeError, match=r"train_policy: the Trainer calls train_policy.step"):
        Trainer(net, opt, loss, None, step_lr, None, None, None, tmp_path, quiet=True)


def read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir(mode=0o500)
    return folder


def proc(tmp_path):
    return "/proc"


@pytest.mark.parametrize(
    "unwritable",
    [
        pytest.param(
            read_only_folder,
            marks=pytest.mark.skipif(os.geteuid() == 0, reason="root ignores permissions"),
        ),
        # no file can be created in /proc, even by root
        pytest.param(
            proc, marks=pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="no /proc")
        ),
    ],
)
def test_an_outdir_that_cannot_be_written_is_an_error_before_the_first_epoch(tmp_path, unwritable):
    outdir = unwritable(tmp_path)
    batches = []
    with pytest.raises(OSError, match=re.escape(f"cannot write in outdir: {str(outdir)!r}")):
        trainer, train, val = make(outdir)  # quiet: only the snapshot writes there
        trainer.add_hook("train_pre_forward", lambda state, sample: batches.append(1))
        with train, val:
            trainer.train(1)
    assert batches == []
    if outdir != "/proc":
        assert os.listdir(outdir) == []


def test_resume_of_a_cut_snapshot_says_so(tmp_path):
    trainer, train, val = make(tmp_path)
    path = trainer.snapshot(0)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    again, train, val = make(tmp_path)
    with pytest.raises(ValueError, match=re.escape(f"snapshot {path!r} is incomplete")):
        again.resume(path)
    assert again.last_snapshot is None
