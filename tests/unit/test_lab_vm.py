"""The VM tier's runner and its way back, with a stand-in for qemu that plays stage 2 on the host.

The real thing (a booted kernel) is what ``tests/vm`` exercises; here the runner's own logic:
the qemu command line, the job directory, streaming, exit statuses, timeouts, JUnit results.
"""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from kube_router_lab import junit, vm

# Plays qemu plus the guest's stage 2: finds the job directory on the kernel command line, runs
# cmd.sh with its output in the job directory, and writes uptime and rc as stage 2 does.
FAKE_QEMU = """\
import os, subprocess, sys, time
args = sys.argv[1:]
append = args[args.index("-append") + 1]
env = dict(kv.split("=", 1) for kv in append.split() if kv.startswith("KRVM_"))
job = env["KRVM_JOB"]
mode = os.environ.get("FAKE_QEMU", "ok")
if mode == "hang":
    time.sleep(60)
if mode == "crash":
    print("Kernel panic - not syncing: fake", flush=True)
    sys.exit(0)
with open(job + "/stdout", "wb") as out, open(job + "/stderr", "wb") as err:
    rc = subprocess.run(["bash", job + "/cmd.sh"], stdout=out, stderr=err).returncode
open(job + "/uptime", "w").write("2.5 3.0 4.25\\n")
open(job + "/rc", "w").write(f"{rc}\\n")
"""


@pytest.fixture
def image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> vm.VmImage:
    qemu = tmp_path / "fake-qemu"
    qemu.write_text(f"#!{sys.executable}\n{FAKE_QEMU}")
    qemu.chmod(0o755)
    monkeypatch.setattr(vm, "host_tsc_khz", lambda: 2445412)
    return vm.VmImage(tmp_path / "vmlinux", tmp_path / "initrd", tmp_path, "6.1.0-test", str(qemu))


def spec(tmp_path: Path, *argv: str, timeout: float = 30.0) -> vm.VmSpec:
    return vm.VmSpec(argv=argv, cwd=tmp_path, modules=["ip_vs"], env={"X": "a b"}, timeout=timeout)


def test_the_guest_command_runs_with_its_env_and_cwd_and_its_status_comes_back(
    image: vm.VmImage, tmp_path: Path
) -> None:
    job = vm.new_job_dir(tmp_path)
    out, err = io.BytesIO(), io.BytesIO()
    script = 'echo "$X|$PWD|$1"; command -v python; echo oops >&2; exit 7'
    result = vm.run(
        image, spec(tmp_path, "sh", "-c", script, "-", "it's"), job, stdout=out, stderr=err
    )
    assert result.status == 7 and result.exit_code == 7 and not result.timed_out
    lines = out.getvalue().decode().splitlines()
    assert lines[0] == f"a b|{tmp_path}|it's"
    assert lines[1] == str(vm.venv_bin() / "python")
    assert err.getvalue() == b"oops\n"
    assert (job / "modules").read_text() == "ip_vs\n"
    assert (result.boot_s, result.modprobe_s, result.command_s) == (2.5, 0.5, 1.25)
    assert "exit status 7" in result.describe() and "boot 2.5 s" in result.describe()


def test_no_status_is_125_and_the_console_tells_why(
    image: vm.VmImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QEMU", "crash")
    result = vm.run(image, spec(tmp_path, "true"), vm.new_job_dir(tmp_path))
    assert result.status is None and result.exit_code == vm.NO_STATUS
    assert "Kernel panic" in result.tail("console.log")
    assert result.describe().startswith("no exit status")


def test_a_hung_guest_is_stopped_at_the_deadline(
    image: vm.VmImage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_QEMU", "hang")
    result = vm.run(image, spec(tmp_path, "true", timeout=1.0), vm.new_job_dir(tmp_path))
    assert result.timed_out and result.exit_code == vm.NO_STATUS
    assert result.wall_s < 1.0 + vm.KILL_GRACE_S + 5
    assert result.describe().startswith("timed out")


def test_qemu_gets_tcg_microvm_the_shares_and_the_tsc_hint(
    image: vm.VmImage, tmp_path: Path
) -> None:
    argv = vm.qemu_argv(image, spec(tmp_path, "true"), tmp_path / "job", 2445412)
    joined = " ".join(argv)
    assert argv[argv.index("-accel") + 1].startswith("tcg,")
    assert "kvm" not in joined
    assert argv[argv.index("-M") + 1].startswith("microvm,")
    cmdline = argv[argv.index("-append") + 1]
    assert "tsc_early_khz=2445412" in cmdline and f"KRVM_JOB={tmp_path / 'job'}" in cmdline
    tags = [a.rsplit("mount_tag=", 1)[1] for a in argv if "mount_tag=" in a]
    assert tags == ["hostroot", "kmods", "job"]
    assert "path=/,security_model=none,readonly=on,multidevs=remap" in joined


def test_tsc_khz_comes_from_cpuinfo() -> None:
    assert vm.tsc_khz("processor\t: 0\ncpu MHz\t\t: 2445.412\n") == 2445412
    assert vm.tsc_khz("processor\t: 0\n") is None
    assert vm.tsc_khz("cpu MHz\t: fast\n") is None


def test_locate_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(vm.VmUnavailable, match="not installed"):
        vm.VmImage.locate(tmp_path, qemu="no-such-qemu-here")
    with pytest.raises(vm.VmUnavailable, match="no guest kernel"):
        vm.VmImage.locate(tmp_path, qemu="true")
    (tmp_path / "kver").write_text("6.1.0-test\n")
    with pytest.raises(vm.VmUnavailable, match="vmlinux is missing"):
        vm.VmImage.locate(tmp_path, qemu="true")


def test_the_cli_runs_and_exits_with_the_guest_status(
    image: vm.VmImage,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(vm.VmImage, "locate", classmethod(lambda cls, cache: image))
    monkeypatch.setattr(vm.tempfile, "tempdir", str(tmp_path))
    assert (
        vm.main(["run", "-v", "--modprobe", "ip_vs,ip_vs_rr", "--", "sh", "-c", "echo hi; exit 3"])
        == 3
    )
    out, err = capfd.readouterr()
    assert out == "hi\n" and "exit status 3" in err
    assert not list(tmp_path.glob("krvm-*")), "the job directory is removed"
    assert vm.main(["run"]) == vm.NO_STATUS
    assert "no command" in capfd.readouterr().err


def test_junit_keys_match_what_pytest_writes(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "test_x.py").write_text(
        textwrap.dedent(
            """
            import pytest

            @pytest.mark.parametrize("p", ["a::b", "c[d]"])
            def test_param(p):
                pass

            class TestGroup:
                def test_fails(self):
                    assert 1 == 2, "boom"

                def test_skips(self):
                    pytest.skip("not here")

            @pytest.mark.xfail(reason="known")
            def test_xfail():
                assert False

            @pytest.fixture
            def broken():
                raise RuntimeError("setup broke")

            def test_setup_error(broken):
                pass
            """
        )
    )
    xml = tmp_path / "junit.xml"
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:hypothesispytest",
    ]
    argv += [
        "-p",
        "no:pytest_cov",
        "--rootdir",
        str(tmp_path),
        f"--junitxml={xml}",
        "-o",
        "addopts=",
    ]
    collected = subprocess.run(
        [*argv, "--collect-only", "sub"], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    nodeids = [line for line in collected.stdout.splitlines() if "::" in line]
    subprocess.run([*argv, "sub"], cwd=tmp_path, capture_output=True, check=False)
    cases = junit.read(xml)
    outcomes = {n.split("::", 1)[1]: cases[junit.junit_key(n)].outcome for n in nodeids}
    assert outcomes == {
        "test_param[a::b]": "passed",
        "test_param[c[d]]": "passed",
        "TestGroup::test_fails": "failed",
        "TestGroup::test_skips": "skipped",
        "test_xfail": "xfailed",
        "test_setup_error": "failed",
    }
    failed = cases[junit.junit_key("sub/test_x.py::TestGroup::test_fails")]
    assert "boom" in failed.message and "assert 1 == 2" in failed.text
    assert "setup broke" in cases[junit.junit_key("sub/test_x.py::test_setup_error")].text


def test_junit_errors_are_reported(tmp_path: Path) -> None:
    with pytest.raises(junit.JunitError):
        junit.read(tmp_path / "missing.xml")
    with pytest.raises(junit.JunitError):
        junit.parse("<testsuites")
