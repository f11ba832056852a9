"""The routing controller's CNI conf file: ranges, MTU, legacy subnet, unknown keys, writes."""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kube_router.controllers.routing.cni import (
    CniConf,
    CniConfError,
    cni_conf_path,
    is_conflist,
)

DATA = Path(__file__).parent.parent / "testdata" / "routing" / "cni"
V4, V6 = "10.1.0.0/24", "fd00:10:1::/64"


def copy_fixture(tmp_path: Path, name: str, as_name: str | None = None) -> Path:
    target = tmp_path / (as_name or name)
    shutil.copy(DATA / name, target)
    return target


def ranges(conf: CniConf) -> Any:
    return conf.ipam["ranges"]


@pytest.mark.parametrize(
    ("env", "want"),
    [
        ({}, "/etc/cni/net.d/10-kuberouter.conf"),
        ({"KUBE_ROUTER_CNI_CONF_FILE": ""}, "/etc/cni/net.d/10-kuberouter.conf"),
        ({"KUBE_ROUTER_CNI_CONF_FILE": "/x/10-kr.conflist"}, "/x/10-kr.conflist"),
    ],
)
def test_conf_path(env: dict[str, str], want: str) -> None:
    assert cni_conf_path(env) == Path(want)


@pytest.mark.parametrize(
    ("name", "want"),
    [("a.conf", False), ("a.conflist", True), ("A.CONFLIST", True), ("a.json", False)],
)
def test_conflist_by_suffix(name: str, want: bool) -> None:
    assert is_conflist(name) is want


@pytest.mark.parametrize(
    ("fixture", "cidrs", "mtu", "want_ranges"),
    [
        ("10-kuberouter.conf", [V4], 1500, [[{"subnet": V4}]]),
        ("10-kuberouter.conflist", [V4, V6], 9001, [[{"subnet": V4}], [{"subnet": V6}]]),
        (
            "dual-stack.conflist",
            [V4, V6],
            1450,
            [[{"subnet": V4, "rangeStart": "10.1.0.5"}], [{"subnet": V6}]],
        ),
        (
            "legacy-subnet.conf",
            [V4],
            None,
            [[{"subnet": V4, "rangeStart": "10.1.0.10", "gateway": "10.1.0.1"}]],
        ),
        (
            "legacy-subnet.conf",
            ["10.2.0.0/24"],
            None,
            [
                [{"subnet": V4, "rangeStart": "10.1.0.10", "gateway": "10.1.0.1"}],
                [{"subnet": "10.2.0.0/24"}],
            ],
        ),
    ],
)
def test_ranges_and_mtu(
    tmp_path: Path, fixture: str, cidrs: list[str], mtu: int | None, want_ranges: Any
) -> None:
    path = copy_fixture(tmp_path, fixture)
    conf = CniConf.load(path)
    before_mtu = conf.mtu
    conf.insert_pod_cidrs(cidrs)
    if mtu is not None:
        conf.set_mtu(mtu)
    assert conf.write()
    again = CniConf.load(path)
    assert ranges(again) == want_ranges
    assert again.mtu == (mtu if mtu is not None else before_mtu)
    assert "subnet" not in again.ipam
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_default_conf_gets_what_upstream_writes(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path, "10-kuberouter.conf")
    conf = CniConf.load(path)
    conf.insert_pod_cidrs([V4])
    conf.set_mtu(1500)
    conf.write()
    assert json.loads(path.read_text()) == {
        "cniVersion": "0.3.0",
        "name": "mynet",
        "type": "bridge",
        "bridge": "kube-bridge",
        "isDefaultGateway": True,
        "ipam": {"type": "host-local", "ranges": [[{"subnet": V4}]]},
        "mtu": 1500,
    }


def test_conflist_only_bridge_plugin_changes(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path, "10-kuberouter.conflist")
    before = json.loads(path.read_text())
    conf = CniConf.load(path)
    conf.insert_pod_cidrs([V4])
    conf.set_mtu(1400)
    conf.write()
    after = json.loads(path.read_text())
    assert after["plugins"][1] == before["plugins"][1]  # portmap untouched
    bridge = after["plugins"][0]
    assert bridge["hairpinMode"] is True
    assert bridge["mtu"] == 1400
    assert bridge["ipam"] == {"type": "host-local", "ranges": [[{"subnet": V4}]]}


def _key_paths(value: Any, prefix: str = "") -> list[str]:
    """Every key path in document order (lists by index)."""
    out: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            out.append(f"{prefix}/{key}")
            out += _key_paths(item, f"{prefix}/{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += _key_paths(item, f"{prefix}/{i}")
    return out


def test_unknown_keys_and_order_kept(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path, "unknown-keys.conflist")
    before = json.loads(path.read_text())
    conf = CniConf.load(path)
    assert conf.insert_pod_cidrs([V4, V6]) == [V6]
    conf.set_mtu(1480)
    conf.write()
    after = json.loads(path.read_text())
    added = {"/plugins/1/mtu", "/plugins/1/ipam/ranges/1", "/plugins/1/ipam/ranges/1/0"}
    added.add("/plugins/1/ipam/ranges/1/0/subnet")
    assert [p for p in _key_paths(after) if p not in added] == _key_paths(before)
    assert after["zzFirst"] == before["zzFirst"]
    assert after["plugins"][1]["ipam"]["ranges"][0] == [{"subnet": V4, "note": "kept"}]
    assert after["plugins"][1]["dns"] == before["plugins"][1]["dns"]


def test_unchanged_file_is_not_rewritten(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path, "dual-stack.conflist")
    text = path.read_text()
    conf = CniConf.load(path)
    assert conf.insert_pod_cidrs(["10.1.0.9/24"]) == []  # the same network, not canonical
    conf.set_mtu(1400)
    inode = path.stat().st_ino
    assert not conf.write()
    assert path.read_text() == text and path.stat().st_ino == inode


def test_second_pass_is_a_no_op(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path, "legacy-subnet.conf")
    for expect_write in (True, False):
        conf = CniConf.load(path)
        conf.insert_pod_cidrs([V4, V6])
        conf.set_mtu(1500)
        assert conf.write() is expect_write
    assert [p.name for p in tmp_path.iterdir()] == ["legacy-subnet.conf"]  # no temp file left


def test_legacy_subnet_already_in_ranges_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "x.conf"
    doc = {
        "type": "bridge",
        "ipam": {"type": "host-local", "subnet": V4, "ranges": [[{"subnet": V4}]]},
    }
    path.write_text(json.dumps(doc))
    conf = CniConf.load(path)
    assert conf.ipam == {"type": "host-local", "ranges": [[{"subnet": V4}]]}


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.conf", "{not json", "not valid JSON"),
        ("a.conf", "[1, 2]", "JSON object"),
        ("a.conf", '{"type": "ptp", "ipam": {}}', "not the 'bridge' plugin"),
        ("a.conf", '{"name": "x"}', "not the 'bridge' plugin"),
        ("a.conf", '{"type": "bridge"}', "no 'ipam' object"),
        ("a.conflist", '{"plugins": []}', "non-empty 'plugins'"),
        ("a.conflist", '{"type": "bridge", "ipam": {}}', "non-empty 'plugins'"),
        ("a.conflist", '{"plugins": [{"type": "portmap"}]}', "no plugin of type 'bridge'"),
        ("a.conf", '{"type": "bridge", "ipam": {"ranges": {}}}', "list of range sets"),
        ("a.conf", '{"type": "bridge", "ipam": {"subnet": "bad"}}', "legacy ipam.subnet"),
    ],
)
def test_bad_files(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(CniConfError, match=message):
        conf = CniConf.load(path)
        conf.insert_pod_cidrs([V4])


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CniConfError, match="reading CNI conf file"):
        CniConf.load(tmp_path / "nope.conf")


def test_bad_pod_cidr(tmp_path: Path) -> None:
    conf = CniConf.load(copy_fixture(tmp_path, "10-kuberouter.conf"))
    with pytest.raises(CniConfError, match="bad pod CIDR"):
        conf.insert_pod_cidr("10.1.0.0/33")


def test_write_failure_is_wrapped(tmp_path: Path) -> None:
    path = copy_fixture(tmp_path, "10-kuberouter.conf")
    conf = CniConf.load(path)
    conf.insert_pod_cidr(V4)
    conf.path = tmp_path / "gone" / "10-kuberouter.conf"  # its directory went away
    with pytest.raises(CniConfError, match="writing CNI conf file"):
        conf.write()


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5))
_json = st.recursive(
    _json_leaf,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=8,
)
_extra = st.dictionaries(
    st.text(min_size=1, max_size=6).filter(lambda k: k not in {"type", "ipam", "mtu", "plugins"}),
    _json,
    max_size=4,
)


@settings(max_examples=60, deadline=None)
@given(
    top=_extra,
    plugin=_extra,
    ipam=_extra.map(
        lambda d: {
            k: v
            for k, v in d.items()
            if k not in ("subnet", "ranges", *("rangeStart", "rangeEnd", "gateway"))
        }
    ),
)
def test_any_unknown_keys_survive(
    top: dict[str, Any], plugin: dict[str, Any], ipam: dict[str, Any]
) -> None:
    doc = {**top, "plugins": [{**plugin, "type": "bridge", "ipam": {**ipam, "type": "host-local"}}]}
    conf = CniConf.parse("x.conflist", json.dumps(doc))
    conf.insert_pod_cidrs([V4, V6])
    conf.set_mtu(1500)
    out = json.loads(conf.render())
    bridge = out["plugins"][0]
    assert {k: v for k, v in out.items() if k != "plugins"} == top
    assert list(out) == list(doc)
    assert {k: v for k, v in bridge.items() if k not in ("mtu",)} | {"ipam": None} == {
        **plugin,
        "type": "bridge",
        "ipam": None,
    }
    assert {k: v for k, v in bridge["ipam"].items() if k != "ranges"} == {
        **ipam,
        "type": "host-local",
    }
    assert bridge["ipam"]["ranges"] == [[{"subnet": V4}], [{"subnet": V6}]]
    again = CniConf.parse("x.conflist", conf.render())
    again.insert_pod_cidrs([V4, V6])
    again.set_mtu(1500)
    assert not again.changed
