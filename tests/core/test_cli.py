from __future__ import annotations

import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import msgpack
import pytest

from crumpets.core import plugins
from crumpets.core.cli import main
from crumpets.core.dataset import Reader
from crumpets.core.plugins import entry_point_names, load_entry_point

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
