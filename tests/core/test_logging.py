from __future__ import annotations

import datetime
import io
import json
import logging
import math
import pathlib

import numpy as np
import pytest

from crumpets.core import logging as clog
from crumpets.core.logging import (
    JSONLogger,
    ProgressPrinter,
    SilentLogger,
    get_logfilename,
    make_printer,
)

LOG_METHODS = ["debug", "info", "warning", "error", "exception", "critical", "fatal"]


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def logger(tmp_path):
    log = JSONLogger("test", tmp_path / "log.jsonl")
    yield log
    log.close()


def test_one_json_object_per_call(logger):
    logger.info(epoch=1, loss=0.5)
    logger.warning(epoch=2, note="ünïcode")
    lines = read_lines(logger.filename)
    assert [line["level"] for line in lines] == ["INFO", "WARNING"]
    assert lines[0]["epoch"] == 1 and lines[0]["loss"] == 0.5
    assert lines[1]["note"] == "ünïcode"
    stamp = datetime.datetime.fromisoformat(lines[0]["time"])
    assert stamp.tzinfo is not None
    assert abs((datetime.datetime.now(datetime.timezone.utc) - stamp).total_seconds()) < 3600


def test_numpy_values_become_plain_json(logger):
    logger.info(
        f32=np.float32(0.25),
        i64=np.int64(7),
        flag=np.bool_(True),
        array=np.arange(3),
        nested={"m": np.ones((2, 2), dtype=np.float16)},
        path=pathlib.Path("a/b"),
    )
    line = read_lines(logger.filename)[0]
    assert line["f32"] == 0.25
    assert line["i64"] == 7
    assert line["flag"] is True
    assert line["array"] == [0, 1, 2]
    assert line["nested"] == {"m": [[1.0, 1.0], [1.0, 1.0]]}
    assert line["path"] == "a/b"


def test_non_finite_floats_read_back(logger):
    logger.info(loss=float("nan"), best=np.float64("inf"))
    line = read_lines(logger.filename)[0]
    assert math.isnan(line["loss"]) and line["best"] == math.inf


def test_level_filters(tmp_path):
    log = JSONLogger("filtered", tmp_path / "log.jsonl", level=logging.WARNING)
    log.debug(a=1)
    log.info(a=2)
    log.error(a=3)
    log.log(logging.CRITICAL, a=4)
    log.close()
    assert [(line["level"], line["a"]) for line in read_lines(tmp_path / "log.jsonl")] == [
        ("ERROR", 3),
        ("CRITICAL", 4),
    ]


def test_every_method_writes(logger):
    for method in LOG_METHODS:
        getattr(logger, method)(method=method)
    logger.log(logging.INFO, method="log")
    lines = read_lines(logger.filename)
    assert [line["method"] for line in lines] == LOG_METHODS + ["log"]
    assert lines[-2]["level"] == "CRITICAL"  # fatal


def test_exception_records_traceback(logger):
    try:
        raise ZeroDivisionError("bad batch")
    except ZeroDivisionError:
        logger.exception(batch=3)
    line = read_lines(logger.filename)[0]
    assert line["level"] == "ERROR" and line["batch"] == 3
    assert "ZeroDivisionError: bad batch" in line["exception"]


def test_is_a_logger_not_registered_globally(tmp_path, caplog):
    log = JSONLogger("crumpets-test-unregistered", tmp_path / "a.jsonl")
    assert isinstance(log, logging.Logger)
    assert logging.getLogger("crumpets-test-unregistered") is not log
    log.info(x=1)
    log.close()
    # Records do not reach the root logger's handlers.
    assert caplog.records == []
    log.info(x=2)  # closed: writes nothing, raises nothing
    assert len(read_lines(tmp_path / "a.jsonl")) == 1


def test_appends_to_existing_file(tmp_path):
    for i in range(2):
        log = JSONLogger("append", tmp_path / "log.jsonl")
        log.info(run=i)
        log.close()
    assert [line["run"] for line in read_lines(tmp_path / "log.jsonl")] == [0, 1]


def test_silent_logger_has_the_same_methods(tmp_path):
    silent = SilentLogger()
    for method in LOG_METHODS:
        assert callable(getattr(JSONLogger, method))
        assert getattr(silent, method)(epoch=1) is None
    assert silent.log(logging.INFO, epoch=1) is None
    silent.close()


def test_progress_printer_counts_and_shows_metrics():
    out = io.StringIO()
    printer = make_printer(total=4, file=out, desc="train", mininterval=0)
    assert isinstance(printer, ProgressPrinter)
    printer(loss=0.125)
    printer(loss=0.25)
    assert printer.n == 2
    assert "loss=0.25" in printer.postfix
    printer.close()
    assert "train" in out.getvalue()


def test_make_printer_defaults_to_stdout_at_call_time(capsys):
    printer = make_printer(total=1, desc="stdout-bar")
    printer(acc=1)
    printer.close()
    assert "stdout-bar" in capsys.readouterr().out


def test_print_goes_through_tqdm_write(capsys):
    clog.print("epoch", 3, {"a": 1})
    assert capsys.readouterr().out == "epoch 3 {'a': 1}\n"


def test_get_logfilename():
    name = get_logfilename(prefix="logs/run-")
    assert name.startswith("logs/run-") and name.endswith(".log")
    stamp = datetime.datetime.strptime(name[len("logs/run-") : -len(".log")], "%Y-%m-%dt%H-%M-%S")
    assert abs((datetime.datetime.now() - stamp).total_seconds()) < 3600
    assert get_logfilename("p", dateformat="X", pathformat="%s_%s.jsonl") == "p_X.jsonl"
