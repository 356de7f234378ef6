from __future__ import annotations

from importlib import metadata

import pytest

from crumpets.core import plugins
from crumpets.core.plugins import PluginNotFound, entry_point_names, load_entry_point


def fake_group(monkeypatch, group, **names):
    """Make ``group`` hold exactly ``names`` (name -> "module:attr")."""
    eps = metadata.EntryPoints(
        metadata.EntryPoint(name=name, value=value, group=group) for name, value in names.items()
    )
    real = plugins._entry_points
    monkeypatch.setattr(plugins, "_entry_points", lambda g: eps if g == group else real(g))
    load_entry_point.cache_clear()


@pytest.fixture(autouse=True)
def clear_cache():
    load_entry_point.cache_clear()
    yield
    load_entry_point.cache_clear()


def test_load_and_cache(monkeypatch):
    fake_group(monkeypatch, "crumpets.test", join="os.path:join", b="json:dumps")
    assert entry_point_names("crumpets.test") == ["b", "join"]
    import os.path

    assert load_entry_point("crumpets.test", "join") is os.path.join
    # Cached: a second lookup does not go through entry points again.
    monkeypatch.setattr(plugins, "_entry_points", lambda g: metadata.EntryPoints(()))
    assert load_entry_point("crumpets.test", "join") is os.path.join


@pytest.mark.parametrize(
    ("group", "name", "message"),
    [
        (
            "crumpets.commands",
            "preview",
            "`crumpets preview` needs crumpets-augment: pip install crumpets-augment",
        ),
        ("crumpets.commands", "bench", "`crumpets bench` needs crumpets-torch"),
        ("crumpets.commands", "demo", "pip install crumpets-train"),
        ("crumpets.workers", "classification", "worker 'classification' needs crumpets-augment"),
        ("crumpets.workers", "saliency", "pip install crumpets-augment"),
    ],
)
def test_missing_plugin_says_what_to_install(monkeypatch, group, name, message):
    fake_group(monkeypatch, group)
    monkeypatch.setattr(plugins, "_is_installed", lambda dist: False)
    with pytest.raises(PluginNotFound) as info:
        load_entry_point(group, name)
    assert message in str(info.value)
    assert isinstance(info.value, LookupError)
    assert (info.value.group, info.value.name) == (group, name)
    assert info.value.distribution.startswith("crumpets-")


def test_installed_but_unregistered_says_reinstall(monkeypatch):
    fake_group(monkeypatch, "crumpets.workers")
    monkeypatch.setattr(plugins, "_is_installed", lambda dist: True)
    with pytest.raises(PluginNotFound, match="pip install --force-reinstall crumpets-augment"):
        load_entry_point("crumpets.workers", "fcn")


def test_unknown_name_lists_installed(monkeypatch):
    fake_group(monkeypatch, "crumpets.workers", mine="json:dumps")
    with pytest.raises(PluginNotFound, match="unknown worker 'nope'; installed: mine"):
        load_entry_point("crumpets.workers", "nope")


def test_failures_are_not_cached(monkeypatch):
    fake_group(monkeypatch, "crumpets.test")
    with pytest.raises(PluginNotFound):
        load_entry_point("crumpets.test", "late")
    fake_group(monkeypatch, "crumpets.test", late="json:dumps")
    import json

    assert load_entry_point("crumpets.test", "late") is json.dumps


def test_core_registers_its_commands():
    try:
        metadata.distribution("crumpets-core")
    except metadata.PackageNotFoundError:
        pytest.skip("crumpets-core is not installed (running from a source tree)")
    from crumpets.core.cli import setup_info, setup_pack

    assert {"pack", "info"} <= set(entry_point_names("crumpets.commands"))
    assert load_entry_point("crumpets.commands", "pack") is setup_pack
    assert load_entry_point("crumpets.commands", "info") is setup_info
