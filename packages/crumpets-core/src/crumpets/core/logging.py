"""Training logs as JSON lines, and progress bars that printing does not break."""

from __future__ import annotations

import datetime
import json
import logging
import os
import sys
from typing import IO, Any

import tqdm

__all__ = [
    "BAR_FORMAT",
    "JSONLogger",
    "ProgressPrinter",
    "SilentLogger",
    "get_logfilename",
    "make_printer",
    "print",
]

BAR_FORMAT = "{desc} {percentage:3.0f}% {elapsed}<{remaining}, {rate_fmt}{postfix}"


def _to_json(obj: Any) -> Any:
    """Turn values json cannot write into plain ones; never fails, a log must not crash."""
    # numpy scalars and arrays, and torch tensors, all have tolist().
    tolist = getattr(obj, "tolist", None)
    if callable(tolist):
        try:
            return tolist()
        except Exception:
            pass
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, (datetime.datetime, datetime.date, datetime.time)):
        return obj.isoformat()
    if isinstance(obj, bytes):
        return obj.decode("utf-8", "replace")
    return str(obj)


class _JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        created = datetime.datetime.fromtimestamp(record.created).astimezone()
        line: dict[str, Any] = {
            "time": created.isoformat(timespec="milliseconds"),
            "level": record.levelname,
        }
        if isinstance(record.msg, dict):
            line.update(record.msg)
        else:
            line["message"] = record.getMessage()
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=_to_json, ensure_ascii=False)


class JSONLogger(logging.Logger):
    """A Logger that writes one JSON object per line (JSON lines) to a file.

    Each call takes keyword fields only: ``logger.info(epoch=1, loss=0.5)`` appends
    ``{"time": "2024-05-01T12:00:00.000+02:00", "level": "INFO", "epoch": 1,
    "loss": 0.5}``. numpy scalars and arrays (anything with ``tolist()``) become
    plain numbers and lists, other unknown values their ``str()``. Non-finite floats
    are written as ``NaN``/``Infinity``, which Python's json and pandas read back.
    A field named ``time`` or ``level`` replaces the one the logger adds.
    Every line is flushed when written.

    The logger is not registered with ``logging.getLogger`` and does not pass
    records to the root logger.

    Args:
        name: logger name.
        filename: file to append lines to.
        level: lowest level that is written; 0 writes everything.

    Example:
        >>> log = JSONLogger("train", "train.log")
        >>> log.info(epoch=1, loss=0.25)
        >>> log.close()
    """

    def __init__(self, name: str, filename: str | os.PathLike[str], level: int = 0) -> None:
        super().__init__(name, level)
        self.propagate = False
        self.filename = os.fspath(filename)
        handler = logging.FileHandler(self.filename, encoding="utf-8")
        handler.setFormatter(_JSONFormatter())
        self.addHandler(handler)

    def _write(self, level: int, fields: dict[str, Any]) -> None:
        exc_info = fields.pop("exc_info", None)
        if self.isEnabledFor(level):
            self._log(level, fields, (), exc_info=exc_info)

    def debug(self, **kwargs: Any) -> None:  # type: ignore[override]
        """Write the keyword fields with severity DEBUG.

        Pass ``exc_info=True`` to add the current exception's traceback.
        """
        self._write(logging.DEBUG, kwargs)

    def info(self, **kwargs: Any) -> None:  # type: ignore[override]
        """Write the keyword fields with severity INFO.

        Pass ``exc_info=True`` to add the current exception's traceback.
        """
        self._write(logging.INFO, kwargs)

    def warning(self, **kwargs: Any) -> None:  # type: ignore[override]
        """Write the keyword fields with severity WARNING.

        Pass ``exc_info=True`` to add the current exception's traceback.
        """
        self._write(logging.WARNING, kwargs)

    def error(self, **kwargs: Any) -> None:  # type: ignore[override]
        """Write the keyword fields with severity ERROR.

        Pass ``exc_info=True`` to add the current exception's traceback.
        """
        self._write(logging.ERROR, kwargs)

    def exception(self, exc_info: Any = True, **kwargs: Any) -> None:  # type: ignore[override]
        """Write the keyword fields with severity ERROR and the current traceback.

        Call it from an exception handler; the traceback goes in the ``exception`` field.
        """
        self._write(logging.ERROR, {**kwargs, "exc_info": exc_info})

    def critical(self, **kwargs: Any) -> None:  # type: ignore[override]
        """Write the keyword fields with severity CRITICAL.

        Pass ``exc_info=True`` to add the current exception's traceback.
        """
        self._write(logging.CRITICAL, kwargs)

    fatal = critical  # type: ignore[assignment]  # keyword fields, like critical above

    def log(self, level: int, **kwargs: Any) -> None:  # type: ignore[override]
        """Write the keyword fields with the integer severity ``level``.

        Pass ``exc_info=True`` to add the current exception's traceback.
        """
        self._write(level, kwargs)

    def close(self) -> None:
        """Close the log file. Later calls write nothing."""
        for handler in list(self.handlers):
            self.removeHandler(handler)
            handler.close()


class SilentLogger:
    """Replacement for a JSONLogger that does not log anything.

    Useful when running multiple processes, but not all of them should log results.
    """

    def debug(self, **kwargs: Any) -> None:
        pass

    def info(self, **kwargs: Any) -> None:
        pass

    def warning(self, **kwargs: Any) -> None:
        pass

    def error(self, **kwargs: Any) -> None:
        pass

    def exception(self, exc_info: Any = True, **kwargs: Any) -> None:
        pass

    def critical(self, **kwargs: Any) -> None:
        pass

    fatal = critical

    def log(self, level: int, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


class ProgressPrinter(tqdm.tqdm):
    """A tqdm progress bar that is called once per step with the step's metrics.

    ``printer(loss=0.3, acc=0.9)`` shows the metrics after the bar and counts one step.
    """

    # No tqdm monitor thread: it would outlive forked workers and the bar is
    # refreshed on each call anyway.
    monitor_interval = 0

    def __call__(self, **kwargs: Any) -> None:
        """Show ``kwargs`` as the bar's postfix and advance by one step."""
        self.set_postfix(refresh=False, **kwargs)
        self.update()


def make_printer(
    bar_format: str = BAR_FORMAT,
    miniters: int = 0,
    mininterval: float = 0.5,
    smoothing: float = 0.1,
    file: IO[str] | None = None,
    **kwargs: Any,
) -> ProgressPrinter:
    """Create a ProgressPrinter with parameters suited to training.

    See the tqdm documentation for the parameters; ``kwargs`` go to tqdm too
    (``total``, ``desc``, ``disable`` ...).

    Args:
        bar_format: tqdm bar format; the default shows percentage, times and rate.
        miniters: minimum steps between refreshes.
        mininterval: minimum seconds between refreshes.
        smoothing: weight of the latest speed in the displayed rate.
        file: stream to write to; None means ``sys.stdout`` at call time.
        **kwargs: further tqdm arguments.

    Returns:
        A new ProgressPrinter.
    """
    return ProgressPrinter(
        bar_format=bar_format,
        miniters=miniters,
        mininterval=mininterval,
        smoothing=smoothing,
        file=sys.stdout if file is None else file,
        **kwargs,
    )


def print(*args: Any) -> None:  # shadows the builtin on purpose
    """Print like the builtin ``print``, without breaking active tqdm bars.

    Arguments are joined by spaces and written to ``sys.stdout`` with ``tqdm.tqdm.write``.

    Args:
        *args: objects to print.
    """
    tqdm.tqdm.write(" ".join(map(str, args)), file=sys.stdout)


def get_logfilename(
    prefix: str = "",
    dateformat: str = "%Y-%m-%dt%H-%M-%S",
    pathformat: str = "%s%s.log",
) -> str:
    """Make a log file name from a prefix and the current local time.

    Args:
        prefix: put before the date, e.g. a directory ``"logs/train-"``.
        dateformat: ``strftime`` format of the date.
        pathformat: ``%``-format taking (prefix, date).

    Returns:
        The file name, e.g. ``"logs/train-2024-05-01t12-00-00.log"``.
    """
    return pathformat % (prefix, datetime.datetime.now().strftime(dateformat))
