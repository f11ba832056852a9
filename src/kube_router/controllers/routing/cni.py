"""The CNI conf file the routing controller manages (reference §4.2 step 1, §5.6, §5.8).

The file is ``KUBE_ROUTER_CNI_CONF_FILE`` (default ``/etc/cni/net.d/10-kuberouter.conf``); a name
ending in ``.conflist`` (any case) is a conf list whose ``plugins`` hold the bridge plugin, any
other name a single plugin conf that must itself be the bridge plugin.

What changes, all in the bridge plugin:

- a legacy ``ipam.subnet`` moves into ``ipam.ranges`` (first, as host-local reads it), with the
  legacy ``rangeStart``, ``rangeEnd`` and ``gateway`` that belong to it;
- each local pod CIDR (IPv4 and IPv6) missing from the ranges is appended as
  ``[{"subnet": cidr}]``;
- with ``--auto-mtu`` its ``mtu`` becomes the node's MTU (or kube-bridge's, see
  :mod:`.bridge`).

Every other key stays, in its order, with its value. The file is written (temporary file in the
same directory, mode 0644, fsync, rename) only when its data changed, so an unchanged file keeps
its formatting and its mtime. The temporary name starts with a dot and ends in ``.tmp``, so a
container runtime watching the directory never loads it.

Use::

    conf = CniConf.load(cni_conf_path(os.environ))      # CniConfError if unusable
    conf.insert_pod_cidrs(local_pod_cidrs)
    if auto_mtu and node_mtu:
        conf.set_mtu(node_mtu)
    ... set up kube-bridge; on an MTU the kernel refused: conf.set_mtu(bridge_mtu)
    conf.write()                                         # True when the file changed

Unlike upstream, which re-marshals the document with its keys sorted and rewrites it every
start, key order and unchanged files are kept; a ``.conf`` whose ``type`` is not ``bridge``, a
bridge plugin without ``ipam`` or a conflist without a bridge plugin is a clear error (upstream
uses the plugin anyway, or crashes).
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

log = logging.getLogger(__name__)

CNI_CONF_ENV: Final = "KUBE_ROUTER_CNI_CONF_FILE"
DEFAULT_CNI_CONF_FILE: Final = "/etc/cni/net.d/10-kuberouter.conf"
CONFLIST_SUFFIX: Final = ".conflist"
BRIDGE_TYPE: Final = "bridge"
FILE_MODE: Final = 0o644
JSON_INDENT: Final = 2
# host-local's legacy single range: these ipam keys belong to ipam.subnet (host-local's Range is
# inlined in its IPAM config).
LEGACY_RANGE_KEYS: Final = ("rangeStart", "rangeEnd", "gateway")

Json = dict[str, Any]


class CniConfError(Exception):
    """The CNI conf file is missing, unreadable, not JSON, or has no usable bridge plugin."""


def cni_conf_path(env: Mapping[str, str]) -> Path:
    """``KUBE_ROUTER_CNI_CONF_FILE``, else the default (an empty value means the default)."""
    return Path(env.get(CNI_CONF_ENV) or DEFAULT_CNI_CONF_FILE)


def is_conflist(path: Path | str) -> bool:
    """Whether the file is a conf list: its name ends in ``.conflist`` (any case), as upstream."""
    return str(path).lower().endswith(CONFLIST_SUFFIX)


def canonical_cidr(cidr: str) -> str:
    """``10.1.0.0/24`` for ``10.1.0.7/24``; ValueError for anything that is not a CIDR."""
    return str(ipaddress.ip_network(cidr.strip(), strict=False))


def bridge_plugin(doc: Json, conflist: bool, where: str = "CNI conf") -> Json:
    """The bridge plugin object inside ``doc`` (the document itself for a ``.conf``)."""
    if not conflist:
        kind = doc.get("type")
        if kind != BRIDGE_TYPE:
            raise CniConfError(f"{where}: type is {kind!r}, not the {BRIDGE_TYPE!r} plugin")
        return doc
    plugins = doc.get("plugins")
    if not isinstance(plugins, list) or not plugins:
        raise CniConfError(f"{where}: a conflist needs a non-empty 'plugins' list")
    for plugin in plugins:
        if isinstance(plugin, dict) and plugin.get("type") == BRIDGE_TYPE:
            return plugin
    raise CniConfError(f"{where}: no plugin of type {BRIDGE_TYPE!r} in 'plugins'")


def _ipam(plugin: Json, where: str) -> Json:
    ipam = plugin.get("ipam")
    if not isinstance(ipam, dict):
        raise CniConfError(f"{where}: the bridge plugin has no 'ipam' object")
    return ipam


def _ranges(ipam: Json, where: str) -> list[Any]:
    ranges = ipam.setdefault("ranges", [])
    if not isinstance(ranges, list) or not all(isinstance(rs, list) for rs in ranges):
        raise CniConfError(f"{where}: ipam.ranges must be a list of range sets (lists)")
    return ranges


def range_subnets(ipam: Json, where: str = "CNI conf") -> list[str]:
    """Canonical subnets of every range in ``ipam.ranges`` (in order, repeats kept)."""
    out: list[str] = []
    for range_set in ipam.get("ranges") or []:
        for item in range_set if isinstance(range_set, list) else []:
            subnet = item.get("subnet") if isinstance(item, dict) else None
            if not subnet:
                continue
            try:
                out.append(canonical_cidr(str(subnet)))
            except ValueError as err:
                raise CniConfError(f"{where}: bad subnet {subnet!r} in ipam.ranges") from err
    return out


def migrate_legacy_subnet(ipam: Json, where: str = "CNI conf") -> bool:
    """Move ``ipam.subnet`` (and its rangeStart/rangeEnd/gateway) into ``ipam.ranges``.

    The legacy range goes first, where host-local puts it. When ``ranges`` already holds that
    subnet only ``subnet`` is dropped, as upstream does. True when ``ipam`` changed."""
    subnet = ipam.get("subnet")
    if subnet is None:
        return False
    ranges = _ranges(ipam, where)
    try:
        cidr = canonical_cidr(str(subnet))
    except ValueError as err:
        raise CniConfError(f"{where}: bad legacy ipam.subnet {subnet!r}") from err
    if cidr in range_subnets(ipam, where):
        del ipam["subnet"]
        return True
    legacy: Json = {"subnet": subnet}
    for key in LEGACY_RANGE_KEYS:
        if key in ipam:
            legacy[key] = ipam.pop(key)
    del ipam["subnet"]
    ranges.insert(0, [legacy])
    return True


@dataclass
class CniConf:
    """One CNI conf file: its path, its document (key order kept) and what was read."""

    path: Path
    doc: Json
    loaded: Json = field(repr=False)

    @classmethod
    def load(cls, path: Path | str) -> CniConf:
        """Read and check the file; a legacy ``ipam.subnet`` is migrated right away."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as err:
            raise CniConfError(f"reading CNI conf file {path}: {err.strerror or err}") from err
        return cls.parse(path, text)

    @classmethod
    def parse(cls, path: Path | str, text: str) -> CniConf:
        """The conf from ``text`` as if read from ``path`` (its name decides conf or conflist)."""
        path = Path(path)
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as err:
            raise CniConfError(f"CNI conf file {path} is not valid JSON: {err}") from err
        if not isinstance(doc, dict):
            raise CniConfError(f"CNI conf file {path}: a JSON object is expected")
        conf = cls(path, doc, copy.deepcopy(doc))
        migrate_legacy_subnet(conf.ipam, str(path))
        return conf

    @property
    def conflist(self) -> bool:
        return is_conflist(self.path)

    @property
    def bridge(self) -> Json:
        """The bridge plugin (an object inside :attr:`doc`, changed in place)."""
        return bridge_plugin(self.doc, self.conflist, str(self.path))

    @property
    def ipam(self) -> Json:
        return _ipam(self.bridge, str(self.path))

    @property
    def subnets(self) -> list[str]:
        """The pod CIDRs the bridge plugin hands out addresses from (canonical)."""
        return range_subnets(self.ipam, str(self.path))

    @property
    def mtu(self) -> int | None:
        value = self.bridge.get("mtu")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def changed(self) -> bool:
        """Whether the document differs from what was read (order-sensitive)."""
        return json.dumps(self.doc) != json.dumps(self.loaded)

    def insert_pod_cidr(self, cidr: str) -> bool:
        """Append ``[{"subnet": cidr}]`` unless a range holds it already; True when added."""
        try:
            canonical = canonical_cidr(cidr)
        except ValueError as err:
            raise CniConfError(f"{self.path}: bad pod CIDR {cidr!r}") from err
        ipam = self.ipam
        ranges = _ranges(ipam, str(self.path))
        if canonical in range_subnets(ipam, str(self.path)):
            return False
        ranges.append([{"subnet": canonical}])
        log.info("CNI conf %s: added pod CIDR %s to the bridge plugin's ranges", self.path, cidr)
        return True

    def insert_pod_cidrs(self, cidrs: Iterable[str]) -> list[str]:
        """Insert each CIDR (IPv4 and IPv6 alike); the ones that were added."""
        return [c for c in cidrs if self.insert_pod_cidr(c)]

    def set_mtu(self, mtu: int) -> None:
        """The bridge plugin's ``mtu`` (the pods' veths get it); non-positive values are ignored,
        as upstream only sets a known MTU."""
        if mtu > 0:
            self.bridge["mtu"] = mtu

    def render(self) -> str:
        return json.dumps(self.doc, indent=JSON_INDENT) + "\n"

    def write(self) -> bool:
        """Write the file atomically with mode 0644 if its data changed; True when written."""
        if not self.changed and self.path.exists():
            return False
        write_atomically(self.path, self.render())
        self.loaded = copy.deepcopy(self.doc)
        log.info("wrote CNI conf file %s", self.path)
        return True


def write_atomically(path: Path, text: str, mode: int = FILE_MODE) -> None:
    """Temporary file next to ``path`` (a dot name ending in ``.tmp``), fsync, rename."""
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w") as out:
            os.fchmod(out.fileno(), mode)
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except OSError as err:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise CniConfError(f"writing CNI conf file {path}: {err.strerror or err}") from err


__all__ = [
    "CNI_CONF_ENV",
    "DEFAULT_CNI_CONF_FILE",
    "CniConf",
    "CniConfError",
    "bridge_plugin",
    "canonical_cidr",
    "cni_conf_path",
    "is_conflist",
    "migrate_legacy_subnet",
    "range_subnets",
    "write_atomically",
]
