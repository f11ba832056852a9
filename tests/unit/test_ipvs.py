"""The IPVS port: the netlink codec round-trips, and the fake follows the kernel's rules."""

from __future__ import annotations

import errno
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kube_router.dataplane import ipvs
from kube_router.dataplane import ipvs_netlink as nl
from kube_router.dataplane.ipvs import (
    Dest,
    InvalidOpError,
    IPVSOpError,
    Service,
    ServiceKey,
    Transaction,
)
from kube_router.dataplane.ipvs_fake import FakeIPVS

VIP = ServiceKey.of("10.96.0.10", "tcp", 80)
VIP6 = ServiceKey.of("fd00::10", "udp", 53)
MARK = ServiceKey.mark(0x3039)

# --- codec ------------------------------------------------------------------------------------

addresses4 = st.ip_addresses(v=4).map(str)
addresses6 = st.ip_addresses(v=6).map(str)


@st.composite
def services(draw: st.DrawFn) -> Service:
    family = draw(st.sampled_from(["ipv4", "ipv6"]))
    if draw(st.booleans()):
        key = ServiceKey.mark(draw(st.integers(1, ipvs.U32_MAX)), family)
    else:
        address = draw(addresses4 if family == "ipv4" else addresses6)
        key = ServiceKey.of(
            address, draw(st.sampled_from(["tcp", "udp", "sctp"])), draw(st.integers(0, 65535))
        )
    top = ipvs.HOST_PREFIX[family]
    return Service(
        key,
        draw(st.sampled_from(sorted(ipvs.SCHEDULERS))),
        draw(st.integers(0, ipvs.USER_FLAGS)) & ipvs.USER_FLAGS,
        draw(st.integers(0, ipvs.U32_MAX)),
        draw(st.integers(0 if family == "ipv4" else 1, top)),
        draw(st.sampled_from(["", "sip"])),
    )


@st.composite
def dests(draw: st.DrawFn) -> Dest:
    return Dest(
        draw(addresses4 | addresses6),
        draw(st.integers(0, 65535)),
        draw(st.integers(0, ipvs.U32_MAX)),
        draw(st.sampled_from(sorted(ipvs.FWD_METHODS))),
        draw(st.integers(0, ipvs.U32_MAX)),
        draw(st.integers(0, ipvs.U32_MAX)),
        draw(st.integers(0, 2)),
        draw(st.integers(0, 65535)),
        draw(st.integers(0, 65535)),
    )


@given(services())
def test_service_attributes_round_trip(service: Service) -> None:
    outer = nl.parse_attrs(nl.service_attrs(service, full=True))
    decoded, stats = nl.decode_service(outer[nl.ATTR_SERVICE])
    assert decoded == service
    assert stats == ipvs.Stats()


@given(dests())
def test_dest_attributes_round_trip(dest: Dest) -> None:
    outer = nl.parse_attrs(nl.dest_attrs(dest, full=True))
    assert nl.decode_dest(outer[nl.ATTR_DEST], "ipv4").dest == dest


def test_netmask_encoding_is_the_kernels() -> None:
    """IPv4: a mask in network byte order; IPv6: the prefix length as a plain u32."""
    v4 = nl.parse_attrs(
        nl.parse_attrs(nl.service_attrs(Service(VIP, netmask=24), True))[nl.ATTR_SERVICE]
    )
    assert v4[nl.SVC_NETMASK] == bytes([255, 255, 255, 0])
    v6 = nl.parse_attrs(nl.parse_attrs(nl.service_attrs(Service(VIP6), True))[nl.ATTR_SERVICE])
    assert struct.unpack("=I", v6[nl.SVC_NETMASK])[0] == 128


def test_messages_split_a_receive_buffer() -> None:
    one = nl.message(
        30, nl.NLM_F_REQUEST, 7, nl.CMD_NEW_SERVICE, nl.service_attrs(Service(VIP), True)
    )
    two = nl.message(
        30, nl.NLM_F_REQUEST, 8, nl.CMD_DEL_SERVICE, nl.service_attrs(Service(VIP), False)
    )
    got = list(nl.messages(one + two))
    assert [(kind, seq) for kind, _flags, seq, _body in got] == [(30, 7), (30, 8)]


# --- the fake's rules -------------------------------------------------------------------------


def _tx(*steps: tuple[str, object]) -> Transaction:
    tx = Transaction()
    for kind, arg in steps:
        if kind == "add-service":
            assert isinstance(arg, Service)
            tx.add_service(arg)
        elif kind == "edit-service":
            assert isinstance(arg, Service)
            tx.edit_service(arg)
        elif kind == "del-service":
            assert isinstance(arg, ServiceKey)
            tx.del_service(arg)
        else:
            assert isinstance(arg, tuple)
            key, dest = arg
            getattr(tx, kind.replace("-", "_"))(key, *((dest,) if kind != "del-dest" else dest.key))
    return tx


BACKEND = Dest("10.244.1.5", 8080)


@pytest.mark.parametrize(
    ("steps", "errnos"),
    [
        ([("add-service", Service(VIP)), ("add-service", Service(VIP))], [errno.EEXIST]),
        ([("edit-service", Service(VIP))], [errno.ESRCH]),
        ([("del-service", VIP)], [errno.ESRCH]),
        ([("add-dest", (VIP, BACKEND))], [errno.ESRCH]),
        ([("add-service", Service(VIP, scheduler="nope"))], [errno.ENOENT]),
        ([("add-service", Service(VIP, pe_name="nope"))], [errno.ENOENT]),
        ([("add-service", Service(VIP6, netmask=0))], [errno.EINVAL]),
        (
            [
                ("add-service", Service(VIP)),
                ("add-dest", (VIP, BACKEND)),
                ("add-dest", (VIP, BACKEND)),
            ],
            [errno.EEXIST],
        ),
        ([("add-service", Service(VIP)), ("del-dest", (VIP, BACKEND))], [errno.ENOENT]),
        ([("add-service", Service(VIP)), ("edit-dest", (VIP, BACKEND))], [errno.ENOENT]),
        (
            [
                ("add-service", Service(VIP)),
                ("add-dest", (VIP, Dest("10.0.0.1", 80, weight=2**31))),
            ],
            [errno.ERANGE],
        ),
        (
            [("add-service", Service(VIP)), ("add-dest", (VIP, Dest("10.0.0.1", 80, 1, 0, 5, 6)))],
            [errno.ERANGE],
        ),
        ([("add-service", Service(VIP)), ("add-dest", (VIP, Dest("fd00::1", 80)))], [errno.EINVAL]),
        (
            [
                ("add-service", Service(VIP)),
                ("add-dest", (VIP, Dest("fd00::1", 80, forward=ipvs.FWD_TUNNEL))),
            ],
            [],
        ),
        (
            [
                ("add-service", Service(VIP)),
                ("add-dest", (VIP, Dest("10.0.0.1", 80, tun_type=ipvs.TUN_GUE))),
            ],
            [],
        ),
        (
            [
                ("add-service", Service(VIP)),
                (
                    "add-dest",
                    (VIP, Dest("10.0.0.1", 80, forward=ipvs.FWD_TUNNEL, tun_type=ipvs.TUN_GUE)),
                ),
            ],
            [errno.EINVAL],
        ),
        ([("add-service", Service(MARK, flags=ipvs.F_PERSISTENT, timeout=300))], []),
    ],
    ids=lambda v: "" if isinstance(v, list) and v and isinstance(v[0], int) else None,
)
async def test_fake_refuses_what_the_kernel_refuses(
    steps: list[tuple[str, object]], errnos: list[int]
) -> None:
    fake = FakeIPVS()
    if errnos:
        with pytest.raises(IPVSOpError) as caught:
            await fake.apply(_tx(*steps))
        assert caught.value.errnos() == errnos
    else:
        await fake.apply(_tx(*steps))


async def test_fake_applies_the_rest_of_a_transaction_after_a_failure() -> None:
    fake = FakeIPVS()
    tx = _tx(
        ("add-dest", (VIP, BACKEND)), ("add-service", Service(VIP)), ("add-dest", (VIP, BACKEND))
    )
    refused = r"add-dest tcp/10\.96\.0\.10:80 -> 10\.244\.1\.5:8080: ESRCH"
    with pytest.raises(IPVSOpError, match=refused):
        await fake.apply(tx)
    state = (await fake.dump())[VIP]
    assert list(state.dests) == [BACKEND.key]


async def test_fake_edits_services_and_dests() -> None:
    fake = FakeIPVS()
    await fake.apply(_tx(("add-service", Service(VIP)), ("add-dest", (VIP, BACKEND))))
    sh = Service(VIP, "sh", ipvs.F_SCHED1 | ipvs.F_SCHED2 | ipvs.F_HASHED)
    await fake.apply(
        _tx(("edit-service", sh), ("edit-dest", (VIP, Dest("10.244.1.5", 8080, weight=0))))
    )
    state = (await fake.dump())[VIP]
    assert state.service == Service(VIP, "sh", ipvs.F_SCHED1 | ipvs.F_SCHED2, 0, 32)
    assert state.dests[BACKEND.key].dest.weight == 0


@pytest.mark.parametrize(
    "op",
    [
        Transaction().add_service(Service(ServiceKey("ipv4", ipvs.TCP, "10.0.0.300", 80))),
        Transaction().add_service(Service(ServiceKey("ipv4", ipvs.TCP, "fd00::1", 80))),
        Transaction().add_dest(VIP, Dest("10.0.0.1", 70000)),
        Transaction().add_dest(VIP, Dest("10.0.0.1", 80, weight=-1)),
        Transaction().add_dest(VIP, Dest("10.0.0.1", 80, forward=9)),
        Transaction().add_service(Service(VIP, scheduler="a-very-long-scheduler")),
    ],
)
async def test_unencodable_operations_fail_before_anything_applies(op: Transaction) -> None:
    fake = FakeIPVS()
    tx = Transaction().add_service(Service(ServiceKey.of("10.1.1.1", "tcp", 1)))
    tx.ops.extend(op.ops)
    with pytest.raises(InvalidOpError):
        await fake.apply(tx)
    assert await fake.dump() == {}


async def test_fake_timeouts_keep_what_a_zero_leaves() -> None:
    fake = FakeIPVS()
    await fake.set_timeouts(ipvs.Timeouts(tcp=3600))
    assert await fake.timeouts() == ipvs.Timeouts(3600, 120, 300)
