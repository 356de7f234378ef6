"""Entry point lookup shared by every crumpets distribution.

The four distributions never import a sibling they do not depend on; they meet
through entry point groups instead. This module is the one place that loads
them, and turns a missing plugin into a sentence that says what to install. It is
public API of crumpets-core: the sibling distributions use it.
"""

from __future__ import annotations

import functools
from importlib import metadata
from typing import Any

__all__ = ["PluginNotFound", "entry_point_names", "load_entry_point"]

# Which distribution registers which name. Used only to word the error message:
# a name missing from this table is still loadable when some package registers it.
KNOWN_PLUGINS: dict[str, dict[str, str]] = {
    "crumpets.commands": {
        "pack": "crumpets-core",
        "info": "crumpets-core",
        "preview": "crumpets-augment",
        "bench": "crumpets-torch",
        "demo": "crumpets-train",
    },
    "crumpets.workers": {
        name: "crumpets-augment"
        for name in ("image", "classification", "fcn", "segmentation", "saliency")
    },
}

# How a plugin of each group is called in messages.
_WHAT = {
    "crumpets.commands": "`crumpets {name}`",
    "crumpets.workers": "worker {name!r}",
}


def known_distribution(group: str, name: str) -> str | None:
    """Name the distribution that provides ``name`` in ``group``, if known.

    Args:
        group: entry point group, e.g. ``"crumpets.commands"``.
        name: entry point name, e.g. ``"preview"``.

    Returns:
        The distribution name (``"crumpets-augment"``), or None for unknown names.
    """
    return KNOWN_PLUGINS.get(group, {}).get(name)


def _is_installed(distribution: str) -> bool:
    try:
        metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return False
    return True


class PluginNotFound(LookupError):
    """No installed distribution registers the requested entry point.

    The message names the distribution to install where it is known, e.g.
    "`crumpets preview` needs crumpets-augment: pip install crumpets-augment".

    Attributes:
        group: the entry point group that was searched.
        name: the entry point name that was not found.
        distribution: the distribution that provides it, or None if unknown.
    """

    def __init__(self, group: str, name: str) -> None:
        self.group = group
        self.name = name
        self.distribution = known_distribution(group, name)
        super().__init__(self._message())

    def _message(self) -> str:
        what = _WHAT.get(self.group, "{name!r} in entry point group {group}")
        what = what.format(name=self.name, group=self.group)
        dist = self.distribution
        if dist is None:
            installed = ", ".join(entry_point_names(self.group)) or "none"
            return f"unknown {what}; installed: {installed}"
        if _is_installed(dist):
            # Happens with stale metadata, e.g. an editable install made before the
            # entry point was declared: reinstalling rewrites it.
            return (
                f"{what} should come from {dist}, which is installed but does not register "
                f"it: reinstall it (pip install --force-reinstall {dist})"
            )
        return f"{what} needs {dist}: pip install {dist}"


def _entry_points(group: str) -> metadata.EntryPoints:
    return metadata.entry_points(group=group)


def entry_point_names(group: str) -> list[str]:
    """List the names registered in an entry point group, sorted, without duplicates.

    Not cached, so a package installed while the process runs shows up.

    Args:
        group: entry point group, e.g. ``"crumpets.workers"``.

    Returns:
        Sorted list of names.
    """
    return sorted({ep.name for ep in _entry_points(group)})


@functools.cache
def load_entry_point(group: str, name: str) -> Any:
    """Load the object registered as ``name`` in entry point ``group``.

    Results are cached per (group, name); failures are not, so installing the
    missing package and asking again works. ``load_entry_point.cache_clear()``
    forgets loaded objects.

    Args:
        group: entry point group, e.g. ``"crumpets.commands"``.
        name: entry point name, e.g. ``"pack"``.

    Returns:
        The loaded object (function, class ...).

    Raises:
        PluginNotFound: no installed distribution registers the name. Errors
            raised while importing the plugin's module propagate unchanged.

    Example:
        >>> setup = load_entry_point("crumpets.commands", "pack")
    """
    for ep in _entry_points(group):
        if ep.name == name:
            return ep.load()
    raise PluginNotFound(group, name)
