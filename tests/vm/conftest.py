"""VM tier: tests that need kernel features this host may lack (IPVS, IPIP, FoU, dummy).

Each test names the modules it needs: ``@pytest.mark.vm(modules=["ip_vs", "ip_vs_rr"])``. Where
this host runs them:

- root, and the host's kernel has (or loads) every module the selected tests ask for: here,
  directly;
- otherwise: all of them in ONE qemu VM (``kube_router_lab.vm``) booting Debian's stock kernel.
  The guest runs pytest on the same test ids with ``--junitxml`` into the job directory, and each
  host item reports its guest test's outcome (a failure carries the guest's failure text), so a
  failure in the guest fails the host's run. When the VM cannot run here (no qemu, no kernel
  image) the tests skip with the reason;
- inside that guest (``KUBE_ROUTER_VM_GUEST=1``): directly.

``KUBE_ROUTER_VM_MODE=vm`` boots the VM even on a capable host; ``host`` never boots it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from kube_router_lab import junit, vm

TIER_DIR = Path(__file__).parent
MODE_ENV = "KUBE_ROUTER_VM_MODE"
# TCG runs code 15-25 times slower than native: a guest test gets more than the host's 120 s.
GUEST_TEST_TIMEOUT_S = 300
GUEST_SESSION_TIMEOUT_S = 900.0
HOST_ITEM_TIMEOUT_S = GUEST_SESSION_TIMEOUT_S + 60
TAIL_LINES = 30
# Importing hypothesis's plugin takes 1.3 s natively, 20 s or more under TCG; no VM test needs it
# (nor coverage: the guest's runs are not measured).
GUEST_PYTEST_NO_PLUGINS = ("-p", "no:hypothesispytest", "-p", "no:pytest_cov")
GUEST_KEY = pytest.StashKey["GuestSession"]()


def vm_modules(node: pytest.Item) -> list[str]:
    marker = node.get_closest_marker("vm")
    return list(marker.kwargs.get("modules", ())) if marker else []


def _in_tier(item: pytest.Item) -> bool:
    return TIER_DIR in Path(str(item.path)).parents


class GuestSession:
    """One VM for the whole selection, booted when the first of its tests runs."""

    def __init__(self, image: vm.VmImage, rootdir: Path, nodeids: list[str], modules: list[str]):
        self.image = image
        self.rootdir = rootdir
        self.nodeids = nodeids
        self.modules = modules
        self.result: vm.VmResult | None = None
        self.cases: dict[tuple[str, str], junit.CaseResult] = {}
        self.problems = 0

    def case(self, nodeid: str) -> junit.CaseResult | None:
        if self.result is None:
            self._boot()
        return self.cases.get(junit.junit_key(nodeid))

    def _boot(self) -> None:
        job = vm.new_job_dir()
        argv = [
            sys.executable,
            *("-m", "pytest", "-q", "-p", "no:cacheprovider"),
            *GUEST_PYTEST_NO_PLUGINS,
            f"--junitxml={job / 'junit.xml'}",
            f"--timeout={GUEST_TEST_TIMEOUT_S}",
            *self.nodeids,
        ]
        spec = vm.VmSpec(
            argv=argv, cwd=self.rootdir, modules=self.modules, timeout=GUEST_SESSION_TIMEOUT_S
        )
        self.result = vm.run(self.image, spec, job)
        try:
            self.cases = junit.read(job / "junit.xml")
        except junit.JunitError:
            self.cases = {}

    def missing_text(self) -> str:
        """Why a test has no guest result: how the VM ended and the tails of its output."""
        assert self.result is not None
        parts = [f"the VM reported no result for this test ({self.result.describe()})"]
        names = ["stdout", "stderr"] + (["console.log"] if self.result.status is None else [])
        for name in names:
            tail = self.result.tail(name, TAIL_LINES)
            if tail:
                parts.append(f"--- guest {name} (tail) ---\n{tail}")
        parts.append(f"job directory: {self.result.job}")
        return "\n".join(parts)


class GuestItem(pytest.Item):
    """A host item standing for one test that ran in the VM."""

    def __init__(self, *, guest: GuestSession, lineno: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.guest = guest
        self.lineno = lineno

    def runtest(self) -> None:
        case = self.guest.case(self.nodeid)
        if case is None:
            self.guest.problems += 1
            pytest.fail(self.guest.missing_text(), pytrace=False)
        elif case.outcome == "failed":
            self.guest.problems += 1
            pytest.fail(f"in the VM: {case.message}\n{case.text}", pytrace=False)
        elif case.outcome == "skipped":
            # Reported at the test's own line, not here (what pytest does for skip markers).
            raise pytest.skip.Exception(f"in the VM: {case.message}", _use_item_location=True)
        elif case.outcome == "xfailed":
            pytest.xfail(f"in the VM: {case.message}")

    def reportinfo(self) -> tuple[Path, int | None, str]:
        return self.path, self.lineno, f"{self.name} (in the VM)"


def _host_missing(modules: list[str]) -> list[str]:
    """What keeps the tests off this host: not root, or kernel modules it cannot load.

    The tier's own modules (IPVS, IPIP, FoU, dummy) count even when a test names none.
    """
    mode = os.environ.get(MODE_ENV, "auto")
    if mode == "host":
        return []
    if mode == "vm":
        return [f"{MODE_ENV}=vm"]
    if os.geteuid() != 0:
        return ["root"]
    return vm.missing_host_modules(sorted({*vm.TIER_MODULES, *modules}))


def _proxy(item: pytest.Item, guest: GuestSession) -> GuestItem:
    lineno = item.reportinfo()[1]
    proxy = GuestItem.from_parent(item.parent, name=item.name, guest=guest, lineno=lineno)
    proxy.own_markers.extend(item.own_markers)
    proxy.add_marker(pytest.mark.timeout(HOST_ITEM_TIMEOUT_S), append=False)
    return proxy


@pytest.hookimpl(trylast=True)  # after -m/-k deselection: boot for the selected tests only
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    tier = [item for item in items if _in_tier(item)]
    for item in tier:
        if item.get_closest_marker("vm") is None:
            item.add_marker(pytest.mark.vm)
    if not tier or vm.in_guest():
        return
    modules = sorted({m for item in tier for m in vm_modules(item)})
    missing = _host_missing(modules)
    if not missing:
        return
    try:
        image = vm.VmImage.locate(Path(os.environ.get(vm.CACHE_ENV, config.rootpath / ".vm")))
    except vm.VmUnavailable as err:
        reason = f"the host lacks {', '.join(missing)}, and the VM tier is unavailable: {err}"
        for item in tier:
            item.add_marker(pytest.mark.skip(reason=reason))
        return
    guest = GuestSession(image, config.rootpath, [item.nodeid for item in tier], modules)
    config.stash[GUEST_KEY] = guest
    proxies = {id(item): _proxy(item, guest) for item in tier}
    items[:] = [proxies.get(id(item), item) for item in items]


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    guest = config.stash.get(GUEST_KEY, None)
    if guest is None or guest.result is None:
        return
    result = guest.result
    last = (result.text("stdout").strip().splitlines() or ["(no output)"])[-1]
    line = f"vm tier: {len(guest.nodeids)} tests in one VM: {result.describe()}; guest: {last}"
    terminalreporter.write_sep("-", "vm tier")
    terminalreporter.write_line(line)
    if guest.problems or result.status != 0:
        terminalreporter.write_line(f"vm tier: job directory kept: {result.job}")
    else:
        shutil.rmtree(result.job, ignore_errors=True)


@pytest.fixture(autouse=True)
def _kernel_modules(request: pytest.FixtureRequest) -> None:
    """Load what the test's marker names (the guest's stage 2 has loaded them already)."""
    missing = [m for m in vm_modules(request.node) if not Path("/sys/module", m).exists()]
    if missing:
        subprocess.run(["modprobe", "-a", *missing], check=True, capture_output=True)


@pytest.fixture
def netns() -> Iterator[Callable[[str], str]]:
    """Makes network namespaces (lo up) named after the test run; removes them afterwards."""
    tag = uuid.uuid4().hex[:6]
    made: list[str] = []

    def make(role: str) -> str:
        name = f"krvm-{tag}-{role}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        made.append(name)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        return name

    yield make
    for name in reversed(made):
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)
