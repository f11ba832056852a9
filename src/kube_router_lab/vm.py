"""Run one command inside a throw-away qemu VM that boots Debian's stock kernel (the VM tier).

This host's kernel lacks IPVS, IPIP, FoU and dummy, so the tests that need them run in a guest:
qemu with TCG (never KVM: ``/dev/kvm`` here is PVM, which boots no stock kernel), the microvm
machine, the kernel and initramfs that ``scripts/vm/setup.sh`` built into ``.vm/``. The guest's
root is the host's ``/`` shared read-only over virtio-9p with a tmpfs overlay, so it runs the
host's tools and this project's virtualenv. A per-run job directory is shared read-write at the
same absolute path: the command, its stdout, stderr and exit status travel through it.

Usage: ``python -m kube_router_lab.vm run [--modprobe MOD ...] -- COMMAND [ARG ...]``. The guest's
output is streamed while it runs; the exit status is the guest command's, or 125 when none came
back (a hang, a panic, the timeout), with the tail of the console printed.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

GUEST_ENV = "KUBE_ROUTER_VM_GUEST"  # set to 1 by stage 2 for the guest command
CACHE_ENV = "KUBE_ROUTER_VM_CACHE"
DEFAULT_CACHE = ".vm"
NO_STATUS = 125
DEFAULT_TIMEOUT_S = 600.0
DEFAULT_MEMORY_MB = 1024
DEFAULT_SMP = 1  # a second vCPU costs about 1 s of boot and buys nothing measurable here
TB_SIZE_MB = 128  # halves qemu's RSS against the 1 GiB default, at the same speed
POLL_S = 0.1
KILL_GRACE_S = 5.0
CONSOLE_TAIL_LINES = 40
KHZ_PER_MHZ = 1000
QEMU = "qemu-system-x86_64"
# What the VM tier exists for (see docs/developing.md); ``check`` asks the host for these.
TIER_MODULES = ("ip_vs", "ip_vs_rr", "ipip", "fou", "dummy")
STAGE2 = Path(__file__).with_name("vmguest") / "stage2.sh"
GUEST_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Quiet, no mitigations, no self-tests, one UART: each trims boot time under TCG.
KERNEL_ARGS = (
    "console=ttyS0 quiet loglevel=1 panic=-1 mitigations=off no_timer_check 8250.nr_uarts=1 "
    "audit=0 apparmor=0 security=none cryptomgr.notests rdinit=/init"
)


class VmUnavailable(Exception):
    """The VM tier cannot run here (no qemu, no kernel image); the message says why."""


@dataclass(frozen=True)
class VmImage:
    """The boot files ``scripts/vm/setup.sh`` left in the cache directory."""

    vmlinux: Path
    initramfs: Path
    modules: Path
    kver: str
    qemu: str

    @classmethod
    def locate(cls, cache: Path, qemu: str = QEMU) -> VmImage:
        hint = "run scripts/vm/setup.sh (as root) or make test"
        qemu_path = shutil.which(qemu)
        if qemu_path is None:
            raise VmUnavailable(f"{qemu} is not installed ({hint})")
        try:
            kver = (cache / "kver").read_text().strip()
        except OSError as err:
            raise VmUnavailable(f"no guest kernel in {cache} ({hint})") from err
        image = cls(
            vmlinux=cache / "vmlinux",
            initramfs=cache / "initramfs.cpio.gz",
            modules=cache / "kroot" / "lib" / "modules" / kver,
            kver=kver,
            qemu=qemu_path,
        )
        for path in (image.vmlinux, image.initramfs, image.modules / "modules.dep"):
            if not path.is_file():
                raise VmUnavailable(f"{path} is missing ({hint})")
        return image


@dataclass(frozen=True)
class VmSpec:
    """What to run in the guest and with what VM."""

    argv: Sequence[str]
    cwd: Path
    modules: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    timeout: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    smp: int = DEFAULT_SMP


@dataclass(frozen=True)
class VmResult:
    """How a run ended. ``status`` is None when the guest wrote no exit status."""

    job: Path
    status: int | None
    timed_out: bool
    wall_s: float
    boot_s: float | None  # guest uptime when stage 2 started
    modprobe_s: float | None  # stage 2 loading the modules asked for
    command_s: float | None  # the command itself

    @property
    def exit_code(self) -> int:
        return NO_STATUS if self.status is None else self.status

    def text(self, name: str) -> str:
        try:
            return (self.job / name).read_text(errors="replace")
        except OSError:
            return ""

    def tail(self, name: str, lines: int = CONSOLE_TAIL_LINES) -> str:
        return "\n".join(self.text(name).splitlines()[-lines:])

    def describe(self) -> str:
        """One line on how the run went, for logs and summaries."""
        end = "timed out" if self.timed_out else f"exit status {self.status}"
        if self.status is None and not self.timed_out:
            end = "no exit status"
        parts = [end, f"wall {self.wall_s:.1f} s"]
        if self.boot_s is not None:
            parts.append(f"boot {self.boot_s:.1f} s")
        if self.modprobe_s is not None:
            parts.append(f"modprobe {self.modprobe_s:.1f} s")
        if self.command_s is not None:
            parts.append(f"command {self.command_s:.1f} s")
        return ", ".join(parts)


def tsc_khz(cpuinfo: str) -> int | None:
    """The host's TSC frequency from /proc/cpuinfo, which TCG's rdtsc passes to the guest.

    microvm has neither HPET nor a PM timer, and PIT calibration under TCG often hangs the boot:
    the guest kernel gets the frequency as ``tsc_early_khz`` instead.
    """
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "cpu MHz":
            try:
                return int(float(value) * KHZ_PER_MHZ)
            except ValueError:
                return None
    return None


def host_tsc_khz() -> int:
    try:
        khz = tsc_khz(Path("/proc/cpuinfo").read_text())
    except OSError as err:
        raise VmUnavailable(f"cannot read /proc/cpuinfo: {err}") from err
    if khz is None:
        raise VmUnavailable("/proc/cpuinfo gives no cpu MHz for the guest's tsc_early_khz")
    return khz


def kernel_cmdline(job: Path, khz: int) -> str:
    # Keys without a dot reach stage 1 as environment variables.
    return f"{KERNEL_ARGS} tsc_early_khz={khz} KRVM_JOB={job} KRVM_STAGE2={STAGE2}"


def _share(tag: str, path: Path, index: int, *, readonly: bool, remap: bool = False) -> list[str]:
    opts = f"local,id=fs{index},path={path},security_model=none"
    opts += ",readonly=on" if readonly else ""
    opts += ",multidevs=remap" if remap else ""  # / spans several host filesystems
    return ["-fsdev", opts, "-device", f"virtio-9p-device,fsdev=fs{index},mount_tag={tag}"]


def qemu_argv(image: VmImage, spec: VmSpec, job: Path, khz: int) -> list[str]:
    """The qemu command line: microvm under TCG, no network device, three 9p shares."""
    return [
        image.qemu,
        *("-accel", f"tcg,thread=multi,tb-size={TB_SIZE_MB}"),
        *("-cpu", "max", "-m", f"{spec.memory_mb}M", "-smp", str(spec.smp)),
        *("-M", "microvm,pit=on,pic=on,rtc=on", "-nodefaults", "-no-user-config"),
        *("-display", "none", "-serial", "stdio", "-no-reboot", "-nic", "none"),
        *("-kernel", str(image.vmlinux), "-initrd", str(image.initramfs)),
        *("-append", kernel_cmdline(job, khz)),
        *_share("hostroot", Path("/"), 0, readonly=True, remap=True),
        *_share("kmods", image.modules, 1, readonly=True),
        *_share("job", job, 2, readonly=False),
    ]


def venv_bin() -> Path:
    """The bin directory of the Python running this, so the guest command finds the venv first."""
    return Path(sys.executable).parent


def command_script(spec: VmSpec) -> str:
    """``cmd.sh``: the guest command with its environment and working directory."""
    env = {"PATH": f"{venv_bin()}:{GUEST_PATH}", **spec.env}
    if sys.prefix != sys.base_prefix:
        env.setdefault("VIRTUAL_ENV", sys.prefix)
    lines = [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
    lines.append(f"cd {shlex.quote(str(spec.cwd))} || exit 1")
    lines.append("exec " + shlex.join(spec.argv))
    return "\n".join(lines) + "\n"


def new_job_dir(parent: Path | None = None) -> Path:
    """A fresh job directory; resolved, since the guest mounts it at the same path."""
    return Path(tempfile.mkdtemp(prefix="krvm-", dir=parent)).resolve()


def write_job(job: Path, spec: VmSpec) -> None:
    if not spec.argv:
        raise ValueError("the guest command is empty")
    (job / "cmd.sh").write_text(command_script(spec))
    (job / "modules").write_text("".join(f"{m}\n" for m in spec.modules))


class _Follower:
    """Copies what the guest appends to a job file (9p with cache=none) to a host stream."""

    def __init__(self, path: Path, sink: BinaryIO | None) -> None:
        self.path = path
        self.sink = sink
        self.offset = 0

    def poll(self) -> None:
        if self.sink is None:
            return
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return
        if data:
            self.offset += len(data)
            self.sink.write(data)
            self.sink.flush()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(KILL_GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _wait(proc: subprocess.Popen[bytes], deadline: float, followers: list[_Follower]) -> bool:
    """Stream the guest's output until qemu exits; True when the deadline stopped it."""
    try:
        while proc.poll() is None:
            for f in followers:
                f.poll()
            if time.monotonic() > deadline:
                _stop(proc)
                return True
            time.sleep(POLL_S)
    finally:
        if proc.poll() is None:  # interrupted (Ctrl-C, a test timeout): leave no VM behind
            _stop(proc)
    for f in followers:
        f.poll()
    return False


@dataclass(frozen=True)
class _Status:
    status: int | None = None
    boot_s: float | None = None
    modprobe_s: float | None = None
    command_s: float | None = None


def _read_status(job: Path) -> _Status:
    try:
        status: int | None = int((job / "rc").read_text())
    except (OSError, ValueError):
        status = None
    try:
        start, loaded, end = (float(x) for x in (job / "uptime").read_text().split())
    except (OSError, ValueError):
        return _Status(status)
    return _Status(status, start, loaded - start, end - loaded)


def run(
    image: VmImage,
    spec: VmSpec,
    job: Path,
    *,
    stdout: BinaryIO | None = None,
    stderr: BinaryIO | None = None,
) -> VmResult:
    """Boot one VM, run ``spec`` in it, and return how it ended (output stays in ``job``).

    The guest's stdout and stderr are copied to the given streams as they grow.
    """
    write_job(job, spec)
    argv = qemu_argv(image, spec, job, host_tsc_khz())
    started = time.monotonic()
    with (job / "console.log").open("wb") as console:
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=console, stderr=console)
        except OSError as err:
            raise VmUnavailable(f"cannot start {image.qemu}: {err}") from err
        followers = [_Follower(job / "stdout", stdout), _Follower(job / "stderr", stderr)]
        timed_out = _wait(proc, started + spec.timeout, followers)
    got = _read_status(job)
    return VmResult(
        job=job,
        status=got.status,
        timed_out=timed_out,
        wall_s=time.monotonic() - started,
        boot_s=got.boot_s,
        modprobe_s=got.modprobe_s,
        command_s=got.command_s,
    )


def in_guest() -> bool:
    return os.environ.get(GUEST_ENV) == "1"


def default_cache() -> Path:
    return Path(os.environ.get(CACHE_ENV, DEFAULT_CACHE)).resolve()


def missing_host_modules(modules: Iterable[str]) -> list[str]:
    """The modules this host's kernel neither has loaded nor can load (as root) now."""
    missing = []
    for name in modules:
        if Path("/sys/module", name.replace("-", "_")).exists():
            continue
        if os.geteuid() == 0 and shutil.which("modprobe"):
            proc = subprocess.run(["modprobe", "-q", name], capture_output=True, check=False)
            if proc.returncode == 0:
                continue
        missing.append(name)
    return missing


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m kube_router_lab.vm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run a command in a fresh VM and exit with its status")
    r.add_argument("--cache", type=Path, default=None, help=f"boot files (${CACHE_ENV} or .vm)")
    r.add_argument("--modprobe", action="append", default=[], metavar="MOD", help="load MOD")
    r.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds for it all")
    r.add_argument("--memory", type=int, default=DEFAULT_MEMORY_MB, help="guest MiB")
    r.add_argument("--smp", type=int, default=DEFAULT_SMP, help="guest vCPUs")
    r.add_argument("--env", action="append", default=[], metavar="K=V", help="guest variable")
    r.add_argument("--keep", action="store_true", help="keep the job directory")
    r.add_argument("-v", "--verbose", action="store_true", help="print the timings at the end")
    r.add_argument("argv", nargs=argparse.REMAINDER, help="-- COMMAND [ARG ...]")
    c = sub.add_parser(
        "check", help="exit 0 when the host kernel has the modules (no VM needed), else 1"
    )
    c.add_argument("--cache", type=Path, default=None)
    c.add_argument("modules", nargs="*", help=f"default: {' '.join(TIER_MODULES)}")
    return parser


def _spec_from_args(args: argparse.Namespace) -> VmSpec:
    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise ValueError("no command given (put it after --)")
    env = dict(kv.partition("=")[::2] for kv in args.env)
    return VmSpec(
        argv=argv,
        cwd=Path.cwd(),
        modules=[m for arg in args.modprobe for m in arg.split(",") if m],
        env=env,
        timeout=args.timeout,
        memory_mb=args.memory,
        smp=args.smp,
    )


def _cmd_run(args: argparse.Namespace) -> int:
    spec = _spec_from_args(args)
    image = VmImage.locate(args.cache or default_cache())
    job = new_job_dir()
    result = run(image, spec, job, stdout=sys.stdout.buffer, stderr=sys.stderr.buffer)
    if result.status is None:
        print(f"vm: {result.describe()}; console tail:", file=sys.stderr)
        print(result.tail("console.log"), file=sys.stderr)
    elif args.verbose:
        print(f"vm: {result.describe()}", file=sys.stderr)
    if args.keep or result.status is None:
        print(f"vm: job directory kept: {job}", file=sys.stderr)
    else:
        shutil.rmtree(job, ignore_errors=True)
    return result.exit_code


def _cmd_check(args: argparse.Namespace) -> int:
    missing = missing_host_modules(args.modules or TIER_MODULES)
    try:
        image = VmImage.locate(args.cache or default_cache())
        ready = f"ready (kernel {image.kver}, {image.qemu})"
    except VmUnavailable as err:
        ready = f"not ready: {err}"
    if not missing:
        print("host: the kernel has every module asked for: the VM tier runs on the host")
        return 0
    print(f"host: the kernel lacks {' '.join(missing)}: the VM tier runs in a VM")
    print(f"vm: {ready}")
    return 1


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _cmd_run(args)
        return _cmd_check(args)
    except (VmUnavailable, ValueError) as err:
        print(f"vm: {err}", file=sys.stderr)
        return NO_STATUS


if __name__ == "__main__":
    sys.exit(main())
