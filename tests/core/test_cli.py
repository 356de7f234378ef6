from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import msgpack
import numpy as np
import pytest

from crumpets.core import _info_command, plugins
from crumpets.core.cli import main
from crumpets.core.dataset import Reader, Writer
from crumpets.core.plugins import entry_point_names, load_entry_point
from crumpets.core.shards import INDEX, ShardedReader

# pack does not decode images, so any bytes under an image extension will do.
FILES = {
    "cat/a.jpg": b"\xff\xd8cat-a",
    "cat/b.PNG": b"\x89PNGcat-b",
    "cat/sub/c.jpeg": b"\xff\xd8cat-c",
    "dog/d.png": b"\x89PNGdog-d",
    "dog/e.webp": b"RIFFdog-e",
}
EXTRA = {"dog/notes.txt": b"not an image", "dog/.hidden.jpg": b"hidden", ".git/x.jpg": b"x"}
EXPECTED = {"cat/a.jpg": 0, "cat/b.PNG": 0, "cat/sub/c.jpeg": 0, "dog/d.png": 1, "dog/e.webp": 1}


def make_tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "images", {**FILES, **EXTRA})


@pytest.fixture
def packed(tree, tmp_path):
    out = tmp_path / "out" / "ds"
    out.parent.mkdir()
    assert main(["pack", str(tree), str(out), "--quiet"]) == 0
    return Path(str(out) + ".msgpack")


def test_pack_writes_records(packed, tree):
    with Reader(packed) as reader:
        records = [reader.get(i) for i in range(len(reader))]
    assert [r["key"] for r in records] == sorted(EXPECTED)
    for record in records:
        assert set(record) == {"key", "image", "label"}
        assert record["image"] == FILES[record["key"]]
        assert record["label"] == EXPECTED[record["key"]]
    classes = msgpack.unpackb(Path(str(packed) + ".classes").read_bytes(), raw=False)
    assert classes == ["cat", "dog"]


def test_pack_prints_mapping(tree, tmp_path, capsys):
    assert main(["pack", str(tree), str(tmp_path / "ds.msgpack")]) == 0
    captured = capsys.readouterr()
    assert "0\tcat\n1\tdog\n" in captured.out
    assert "wrote 5 images of 2 classes" in captured.out
    assert "skipped 1 files" in captured.err


def test_pack_quiet_prints_nothing(tree, tmp_path, capsys):
    assert main(["pack", str(tree), str(tmp_path / "ds"), "-q"]) == 0
    assert capsys.readouterr() == ("", "")


def test_pack_shuffle_is_seeded(tree, tmp_path):
    orders = []
    for i, seed in enumerate([7, 7, 8]):
        out = tmp_path / f"ds{i}"
        assert main(["pack", str(tree), str(out), "-q", "--shuffle", "--seed", str(seed)]) == 0
        with Reader(out) as reader:
            orders.append(reader.keys)
            labels = {reader.get(j)["key"]: reader.get(j)["label"] for j in range(len(reader))}
        assert labels == EXPECTED
    assert orders[0] == orders[1]
    assert sorted(orders[0]) == sorted(EXPECTED)
    assert orders[0] != sorted(EXPECTED)
    assert sorted(orders[2]) == sorted(EXPECTED)


def test_pack_warns_about_empty_class(tmp_path, capsys):
    root = make_tree(tmp_path / "images", FILES)
    (root / "bird").mkdir()
    assert main(["pack", str(root), str(tmp_path / "ds")]) == 0
    captured = capsys.readouterr()
    assert "0\tbird\n1\tcat\n2\tdog\n" in captured.out
    assert "'bird' holds no images" in captured.err


def test_pack_refuses_to_overwrite(packed, tree, capsys):
    capsys.readouterr()
    assert main(["pack", str(tree), str(packed), "-q"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert main(["pack", str(tree), str(packed), "-q", "--overwrite"]) == 0


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda root: None, "is not a directory"),
        (lambda root: root.mkdir(), "no class folders"),
        (lambda root: make_tree(root, {"a.jpg": b"x", "cls/readme.txt": b"x"}), "no images"),
    ],
)
def test_pack_bad_input(tmp_path, capsys, setup, message):
    root = tmp_path / "images"
    setup(root)
    assert main(["pack", str(root), str(tmp_path / "ds")]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Traceback" not in err
    assert not (tmp_path / "ds.msgpack").exists()


def test_info(packed, capsys):
    assert main(["info", str(packed)]) == 0
    out = capsys.readouterr().out
    assert "length:   5" in out
    assert "keys:     5" in out
    assert "first keys: cat/a.jpg, cat/b.PNG, cat/sub/c.jpeg, dog/d.png, dog/e.webp\n" in out
    assert "classes:  2 (cat, dog)" in out
    assert "image  bytes   7 bytes" in out
    assert "label  int     0" in out
    assert "key    str     'cat/a.jpg'" in out


def test_info_limits_keys(packed, capsys):
    assert main(["info", str(packed), "--keys", "2"]) == 0
    assert "first keys: cat/a.jpg, cat/b.PNG, ...\n" in capsys.readouterr().out


def test_info_on_broken_dataset(packed, capsys):
    os.truncate(packed, os.path.getsize(packed) - 1)
    assert main(["info", str(packed)]) == 2
    err = capsys.readouterr().err
    assert "crumpets info: error:" in err and ".offsets" in err
    assert main(["info", str(packed) + "-missing"]) == 2


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "pack" in out and "info" in out
    assert "Pack an image folder tree" in out


def test_usage_errors_return_2(capsys):
    assert main([]) == 2
    assert main(["pack"]) == 2
    assert main(["no-such-command"]) == 2


@pytest.mark.parametrize(
    ("command", "dist"),
    [("preview", "crumpets-augment"), ("bench", "crumpets-torch"), ("demo", "crumpets-train")],
)
def test_missing_plugin_command(command, dist, capsys):
    if command in entry_point_names("crumpets.commands"):
        pytest.skip(f"{dist} is installed")
    assert main([command, "--some-option"]) == 2
    err = capsys.readouterr().err
    assert f"`crumpets {command}` needs {dist}: pip install {dist}" in err
    assert "Traceback" not in err


@pytest.fixture
def fake_commands(monkeypatch):
    """Register extra commands as if another package declared them."""

    def register(**names):
        real = plugins._entry_points
        extra = [
            metadata.EntryPoint(name=n, value=v, group="crumpets.commands")
            for n, v in names.items()
        ]
        monkeypatch.setattr(
            plugins,
            "_entry_points",
            lambda g: (
                metadata.EntryPoints([*real(g), *extra]) if g == "crumpets.commands" else real(g)
            ),
        )
        load_entry_point.cache_clear()

    yield register
    load_entry_point.cache_clear()


def test_commands_come_from_entry_points(fake_commands, packed, capsys):
    fake_commands(describe="crumpets.core.cli:setup_info")
    assert main(["describe", str(packed)]) == 0
    assert "length:   5" in capsys.readouterr().out


def test_broken_plugin_is_a_message(fake_commands, packed, capsys):
    fake_commands(broken="crumpets_no_such_module:setup")
    assert main(["broken"]) == 2
    err = capsys.readouterr().err
    assert "crumpets broken: error: cannot load the command" in err
    assert "crumpets_no_such_module" in err
    # The other commands still work.
    assert main(["info", str(packed)]) == 0


def console_script() -> str | None:
    # The venv's bin directory need not be on PATH; look next to the interpreter first.
    name = "crumpets.exe" if sys.platform == "win32" else "crumpets"
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.exists() else shutil.which("crumpets")


def test_console_script_missing_plugin():
    script = console_script()
    if script is None:
        pytest.skip("the crumpets console script is not installed")
    if "preview" in entry_point_names("crumpets.commands"):
        pytest.skip("crumpets-augment is installed")
    result = subprocess.run([script, "preview"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "`crumpets preview` needs crumpets-augment" in result.stderr
    assert "Traceback" not in result.stderr


def test_python_m(packed):
    result = subprocess.run(
        [sys.executable, "-m", "crumpets.core.cli", "info", str(packed)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "length:   5" in result.stdout


def test_only_the_command_that_runs_is_imported(
    fake_commands, packed, tmp_path, monkeypatch, capsys
):
    # a sibling's command module imports torch or OpenCV: `crumpets --help` and the other
    # commands must not pay for it
    (tmp_path / "heavy_command.py").write_text(
        'def setup(parser):\n    """A heavy command."""\n'
        "    parser.set_defaults(func=lambda args: 0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "heavy_command", raising=False)
    fake_commands(heavy="heavy_command:setup")
    assert main(["--help"]) == 0
    assert "crumpets heavy --help" in capsys.readouterr().out
    assert main(["info", str(packed)]) == 0
    assert "heavy_command" not in sys.modules
    assert main(["heavy", "--help"]) == 0
    assert "A heavy command." in capsys.readouterr().out
    assert main(["heavy"]) == 0 and "heavy_command" in sys.modules


def run_cli(*args):
    """``crumpets ARGS`` in a process of its own, so that a hang cannot hang the tests."""
    return subprocess.run(
        [sys.executable, "-m", "crumpets.core.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_pack_skips_names_that_are_not_utf8(tree, tmp_path, capsys):
    try:
        for name in (b"cat/caf\xe9.jpg", b"caf\xe9/a.jpg"):
            path = os.path.join(os.fsencode(tree), name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(b"\xff\xd8")
    except OSError:  # macOS and Windows refuse such names
        pytest.skip("this file system refuses names that are not UTF-8")
    assert main(["pack", str(tree), str(tmp_path / "ds"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "cat/caf\\xe9.jpg: not UTF-8" in err
    assert "caf\\xe9: not UTF-8" in err
    with Reader(tmp_path / "ds") as reader:
        assert reader.keys == sorted(EXPECTED)
    classes = msgpack.unpackb(Path(str(tmp_path / "ds.msgpack.classes")).read_bytes())
    assert classes == ["cat", "dog"]


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_pack_skips_what_is_not_a_regular_file(tree, tmp_path):
    os.mkfifo(tree / "cat" / "x.jpg")  # opening it for reading waits for a writer forever
    os.symlink(tree / "no-such-file.jpg", tree / "dog" / "broken.jpg")
    os.symlink(tree / "cat" / "a.jpg", tree / "dog" / "linked.jpg")  # a link to a file is fine
    result = run_cli("pack", str(tree), str(tmp_path / "ds"), "-q")
    assert result.returncode == 0, result.stderr
    assert "cat/x.jpg: not a regular file" in result.stderr
    assert "dog/broken.jpg: not a regular file" in result.stderr
    with Reader(tmp_path / "ds") as reader:
        assert reader.keys == sorted([*EXPECTED, "dog/linked.jpg"])


def test_pack_skips_folders_that_link_back_into_the_tree(tree, tmp_path, capsys):
    os.symlink(tree, tree / "loop")  # a class folder that is the root: every image twice
    os.symlink("../cat", tree / "dog" / "cats")  # a subfolder that is another class
    outside = make_tree(tmp_path / "outside", {"x.jpg": b"bird-x"})
    os.symlink(outside, tree / "bird")  # a class folder kept elsewhere is packed
    assert main(["pack", str(tree), str(tmp_path / "ds"), "-q"]) == 0
    err = capsys.readouterr().err
    assert "loop: a link to a folder inside" in err
    assert "dog/cats: a link to a folder inside" in err
    with Reader(tmp_path / "ds") as reader:
        assert reader.keys == ["bird/x.jpg", *sorted(EXPECTED)]
    classes = msgpack.unpackb(Path(str(tmp_path / "ds.msgpack.classes")).read_bytes())
    assert classes == ["bird", "cat", "dog"]


def test_info_on_a_corrupt_first_record(packed, capsys):
    data = bytearray(packed.read_bytes())
    data[0] = 0xC1  # a byte msgpack never uses
    packed.write_bytes(bytes(data))
    assert main(["info", str(packed)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crumpets info: error: ") and err.count("\n") == 1, err
    assert "record 0" in err and str(packed) in err


@pytest.mark.parametrize(
    "contents", [b"\xc1 garbage", b"", msgpack.packb(5), msgpack.packb({"cat": 1}), b"\x91\x01\x02"]
)
def test_info_on_a_garbage_classes_file(packed, capsys, contents):
    Path(str(packed) + ".classes").write_bytes(contents)
    assert main(["info", str(packed)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crumpets info: error: ") and err.count("\n") == 1, err
    assert str(packed) + ".classes" in err


# ---------------------------------------------------------------- sharded datasets


def shard_files(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".msgpack"))


def test_pack_sharded_matches_unsharded(tree, tmp_path):
    options = ["-q", "--shuffle", "--seed", "3"]
    assert main(["pack", str(tree), str(tmp_path / "ds"), *options]) == 0
    # a record is about 40 bytes: a shard holds one or two
    out = tmp_path / "shards"
    assert main(["pack", str(tree), str(out), "--shard-size", "50B", *options]) == 0
    assert (out / INDEX).is_file()
    with Reader(tmp_path / "ds") as reader, ShardedReader(out) as sharded:
        assert len(sharded.shards) >= 3
        assert len(shard_files(out)) == len(sharded.shards)
        assert len(sharded) == len(reader) == len(EXPECTED)
        assert [sharded.get(i) for i in range(len(sharded))] == [
            reader.get(i) for i in range(len(reader))
        ]
        assert [bytes(sharded[i]) for i in range(len(sharded))] == list(map(bytes, reader))
        assert reader.keys != sorted(EXPECTED)  # shuffled, the same way in both
    for i in range(len(EXPECTED)):
        record = sharded.get(i)
        assert record["image"] == FILES[record["key"]]
        assert record["label"] == EXPECTED[record["key"]]
    # each shard is a dataset file of its own
    assert sum(len(Reader(out / name)) for name in shard_files(out)) == len(EXPECTED)
    assert msgpack.unpackb((out / "classes").read_bytes()) == ["cat", "dog"]


def test_pack_sharded_prints_summary(tree, tmp_path, capsys):
    assert main(["pack", str(tree), str(tmp_path / "shards"), "--shard-size", "1"]) == 0
    captured = capsys.readouterr()
    assert "0\tcat\n1\tdog\n" in captured.out
    assert "wrote 5 images of 2 classes to " in captured.out
    assert "(5 shards, " in captured.out
    assert "skipped 1 files" in captured.err


def write_dataset(path: Path, records: list[dict]) -> None:
    with Writer(path) as writer:
        for record in records:
            writer.write(record)


@pytest.mark.parametrize("suffix", [".msgpack", ""])
def test_pack_dataset_file_into_shards(tree, tmp_path, suffix, capsys):
    source = tmp_path / "ds"
    assert main(["pack", str(tree), str(source), "-q", "--shuffle", "--seed", "5"]) == 0
    out = tmp_path / "shards"
    assert main(["pack", f"{source}{suffix}", str(out), "--shard-size", "50B"]) == 0
    assert f"wrote 5 records of {source}.msgpack to {out} (" in capsys.readouterr().out
    with Reader(source) as reader, ShardedReader(out) as sharded:
        assert len(sharded.shards) >= 3
        assert reader.keys != sorted(EXPECTED)
        assert [sharded.get(i)["key"] for i in range(len(sharded))] == reader.keys
        assert [bytes(sharded[i]) for i in range(len(sharded))] == list(map(bytes, reader))
    assert msgpack.unpackb((out / "classes").read_bytes()) == ["cat", "dog"]


def test_pack_dataset_file_keeps_every_field(tmp_path):
    records = [
        {
            "key": f"k{i}",
            "image": np.arange(12, dtype=np.uint8).reshape(3, 4) + i,
            "label": i % 3,
            "box": [1.5, 2.0, i],
            "meta": {"name": f"n{i}", "ok": i % 2 == 0, "none": None},
        }
        for i in range(7)
    ]
    write_dataset(tmp_path / "ds", records[::-1])
    out = tmp_path / "shards"
    assert main(["pack", str(tmp_path / "ds"), str(out), "--shard-size", "100", "-q"]) == 0
    with ShardedReader(out) as sharded:
        assert len(sharded.shards) >= 3
        got = [sharded.get(i) for i in range(len(sharded))]
    assert [r["key"] for r in got] == [f"k{i}" for i in reversed(range(7))]
    for mine, theirs in zip(got, records[::-1]):
        np.testing.assert_array_equal(mine.pop("image"), theirs["image"])
        assert mine == {name: value for name, value in theirs.items() if name != "image"}
    assert not (out / "classes").exists()  # the source has none


def test_pack_dataset_file_shuffled(packed, tmp_path):
    orders = []
    for i, seed in enumerate([4, 4, 9]):
        out = tmp_path / f"shards{i}"
        args = ["pack", str(packed), str(out), "--shard-size", "1", "-q", "--shuffle"]
        assert main([*args, "--seed", str(seed)]) == 0
        with ShardedReader(out) as sharded:
            records = [sharded.get(j) for j in range(len(sharded))]
        assert {r["key"]: r["label"] for r in records} == EXPECTED
        orders.append([r["key"] for r in records])
    assert orders[0] == orders[1]
    assert orders[0] != sorted(EXPECTED)
    assert sorted(orders[2]) == sorted(EXPECTED)


def test_pack_dataset_file_needs_shard_size(packed, tmp_path, capsys):
    capsys.readouterr()
    assert main(["pack", str(packed), str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("crumpets pack: error: ") and err.count("\n") == 1, err
    assert "is a dataset file" in err and "--shard-size" in err
    assert not (tmp_path / "again.msgpack").exists()


@pytest.mark.parametrize("size", ["big", "12XB", "0", "-5", "1.5.0MB", ""])
def test_pack_bad_shard_size(tree, tmp_path, capsys, size):
    out = tmp_path / "shards"
    assert main(["pack", str(tree), str(out), "--shard-size", size]) == 2
    err = capsys.readouterr().err
    assert "usage: crumpets pack" in err
    assert "crumpets pack: error: argument --shard-size:" in err
    assert repr(size) in err
    assert "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(("size", "shards"), [("1KB", 1), ("1", 5), ("64", 3), ("0.1KiB", 2)])
def test_pack_shard_size_units(tree, tmp_path, size, shards):
    out = tmp_path / "shards"
    assert main(["pack", str(tree), str(out), "--shard-size", size, "-q"]) == 0
    with ShardedReader(out) as sharded:
        assert len(sharded.shards) == shards
        assert len(sharded) == len(EXPECTED)


def test_pack_sharded_refuses_to_overwrite(tree, tmp_path, capsys):
    out = tmp_path / "shards"
    assert main(["pack", str(tree), str(out), "--shard-size", "1", "-q"]) == 0
    before = shard_files(out)
    assert main(["pack", str(tree), str(out), "--shard-size", "1", "-q"]) == 2
    assert f"{out / INDEX} exists; pass --overwrite" in capsys.readouterr().err
    assert shard_files(out) == before
    assert main(["pack", str(tree), str(out), "--shard-size", "1KB", "-q", "--overwrite"]) == 0
    after = shard_files(out)
    assert len(after) == 1 and not set(after) & set(before)  # the old shards are gone
    # a repack of a dataset without class names drops the old ones
    write_dataset(tmp_path / "plain", [{"key": "x", "value": 1}])
    assert main(["pack", str(tmp_path / "plain"), str(out), "--shard-size", "1"]) == 2
    assert (
        main(["pack", str(tmp_path / "plain"), str(out), "--shard-size", "1", "-q", "--overwrite"])
        == 0
    )
    assert not (out / "classes").exists()
    with ShardedReader(out) as sharded:
        assert [sharded.get(0)] == [{"key": "x", "value": 1}] and len(sharded) == 1


def test_pack_sharded_into_a_file_is_an_error(packed, tree, capsys):
    capsys.readouterr()
    assert main(["pack", str(tree), str(packed), "--shard-size", "1", "--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "exists and is not a folder" in err and err.count("\n") == 1, err
    with Reader(packed) as reader:  # untouched
        assert reader.keys == sorted(EXPECTED)


@pytest.fixture
def sharded(tree, tmp_path):
    out = tmp_path / "shards"
    assert main(["pack", str(tree), str(out), "--shard-size", "50B", "-q"]) == 0
    return out


@pytest.mark.parametrize("as_url", [False, True], ids=["folder", "file-url"])
def test_info_sharded(sharded, capsys, as_url):
    with ShardedReader(sharded) as reader:
        shards = reader.shards
        nbytes = reader.nbytes
    assert len(shards) >= 3
    target = sharded.as_uri() if as_url else str(sharded)
    assert main(["info", target]) == 0
    out = capsys.readouterr().out
    assert f"dataset:  {target} (sharded)\n" in out
    assert f"shards:   {len(shards)}\n" in out
    assert "samples:  5\n" in out
    assert f"bytes:    {nbytes}\n" in out
    small = min(shards, key=lambda s: (s["bytes"], s["samples"], s["name"]))
    large = max(shards, key=lambda s: (s["bytes"], s["samples"], s["name"]))
    assert f"smallest: {small['name']} ({small['samples']} samples, {small['bytes']} bytes)" in out
    assert f"largest:  {large['name']} ({large['samples']} samples, {large['bytes']} bytes)" in out
    assert "first keys: cat/a.jpg, cat/b.PNG, cat/sub/c.jpeg, dog/d.png, dog/e.webp\n" in out
    assert "classes:  2 (cat, dog)" in out
    assert "image  bytes   7 bytes" in out
    assert "label  int     0" in out
    assert "key    str     'cat/a.jpg'" in out


def test_info_sharded_limits_keys(sharded, capsys):
    assert main(["info", str(sharded), "-k", "2"]) == 0
    assert "first keys: cat/a.jpg, cat/b.PNG, ...\n" in capsys.readouterr().out


def test_info_sharded_in_a_process_of_its_own(sharded):
    result = run_cli("info", sharded.as_uri())
    assert result.returncode == 0, result.stderr
    assert "samples:  5" in result.stdout


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("crumpets info: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


@pytest.mark.parametrize("as_url", [False, True], ids=["folder", "file-url"])
def test_info_on_a_folder_without_index(tree, capsys, as_url):
    target = tree.as_uri() if as_url else str(tree)
    assert main(["info", target]) == 2
    err = one_line_error(capsys)
    assert target in err and INDEX in err


@pytest.mark.parametrize(
    "contents",
    [b"not json", b"{}", b'{"format": "crumpets.shards", "version": 99}', b"[1, 2]"],
)
def test_info_on_a_malformed_index(sharded, capsys, contents):
    (sharded / INDEX).write_bytes(contents)
    assert main(["info", str(sharded)]) == 2
    err = one_line_error(capsys)
    assert f"{sharded / INDEX} is not a sharded dataset's index" in err


def test_info_on_a_shard_entry_without_bytes(sharded, capsys):
    index = json.loads((sharded / INDEX).read_text())
    del index["shards"][1]["bytes"]
    (sharded / INDEX).write_text(json.dumps(index))
    assert main(["info", str(sharded)]) == 2
    err = one_line_error(capsys)
    assert f"{sharded / INDEX} is not a sharded dataset's index" in err and "bytes" in err


def test_info_on_a_garbage_sharded_classes_file(sharded, capsys):
    (sharded / "classes").write_bytes(msgpack.packb(5))
    assert main(["info", sharded.as_uri()]) == 2
    assert f"{sharded.as_uri()}/classes: expected a msgpack list" in one_line_error(capsys)


def test_info_storage_options(monkeypatch, capsys):
    seen = {}

    class Fake:
        def __init__(self, url, **kwargs):
            seen.update(kwargs["storage_options"], url=url)
            raise ValueError("fake")

    monkeypatch.setattr(_info_command, "ShardedReader", Fake)
    options = {
        "endpoint_url": "http://127.0.0.1:8333",
        "key": '"123"',
        "secret": "abc=def",
        "anon": "False",
        "max_concurrency": "4",
        "timeout": "2.5",
        "client_kwargs": '{"region_name": "eu-1"}',
        "version_aware": "true",
        "default_block_size": "null",
    }
    args = [f"--storage-option={key}={value}" for key, value in options.items()]
    assert main(["info", "s3://b/d", *args]) == 2
    assert seen == {
        "url": "s3://b/d",
        "endpoint_url": "http://127.0.0.1:8333",
        "key": "123",
        "secret": "abc=def",
        "anon": False,
        "max_concurrency": 4,
        "timeout": 2.5,
        "client_kwargs": {"region_name": "eu-1"},
        "version_aware": True,
        "default_block_size": None,
    }
    assert "s3://b/d: fake" in one_line_error(capsys)


@pytest.mark.parametrize("option", ["novalue", "=value"])
def test_info_bad_storage_option(sharded, capsys, option):
    assert main(["info", sharded.as_uri(), "--storage-option", option]) == 2
    err = capsys.readouterr().err
    assert "argument --storage-option: expected KEY=VALUE" in err


def test_info_storage_option_needs_a_url(packed, sharded, capsys):
    capsys.readouterr()
    assert main(["info", str(packed), "--storage-option", "anon=true"]) == 2
    assert "--storage-option is for URLs" in one_line_error(capsys)
    assert main(["info", str(sharded), "--storage-option", "anon=true"]) == 2
    assert "storage_options are for URLs" in one_line_error(capsys)
