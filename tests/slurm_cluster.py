"""Test helper: a real single-node SLURM cluster (munged + slurmctld + slurmd) on 127.0.0.1, in a temporary folder.

Debian's ``slurm-wlm`` and ``munge`` packages; needs root (slurmd starts jobs as their user; munged runs as the
``munge`` OS user). Nothing system-wide is used or changed: munged gets its own key and socket, the daemons their own
``slurm.conf`` (``SLURM_CONF``), ports, spool and state folders; client commands find them through :meth:`env`.
Settings that work on a plain VM or container: ``ProctrackType=proctrack/linuxproc`` and ``TaskPlugin=task/none``
(no cgroups), ``SelectType=select/cons_tres`` over one node whose CPUs match ``slurmd -C``, and
``JobCompType=jobcomp/filetxt`` so a test can read each job's final state from SLURM's own record
(:meth:`job_records`).
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

DAEMONS = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "runuser")


def why_unavailable() -> Optional[str]:
    """None when a test cluster can be started here, else the reason (for pytest.skip)."""
    missing = [d for d in DAEMONS if shutil.which(d) is None and not Path("/usr/sbin", d).exists()]
    if missing:
        return f"SLURM test cluster: {', '.join(missing)} not found; apt-get install slurm-wlm munge"
    if os.geteuid() != 0:
        return "SLURM test cluster: slurmd must run as root to start jobs (run the tests as root, as CI does)"
    try:
        pwd.getpwnam("munge")
    except KeyError:
        return "SLURM test cluster: no 'munge' OS user to run munged as (apt-get install munge creates it)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _which(name: str) -> str:
    return shutil.which(name) or str(Path("/usr/sbin", name))


class SlurmCluster:
    """``start()`` brings the daemons up and waits until the node is idle; ``stop()`` tears everything down."""

    def __init__(self, timeout: float = 60.0, kill_wait: int = 30):
        self.timeout = timeout
        self.kill_wait = kill_wait
        self.base = Path(tempfile.mkdtemp(prefix="greg-ood-slurm-"))
        os.chmod(self.base, 0o755)  # munged (user munge) must reach its folder
        self.conf = self.base / "slurm.conf"
        self.munge_dir = self.base / "munge"
        self.socket = self.munge_dir / "munge.socket"
        self.jobcomp = self.base / "jobcomp.txt"
        self.node = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []

    # ---------------------------------------------------------------------------------------------------- start/stop
    def env(self) -> dict[str, str]:
        """What client commands (sbatch, squeue, ...) need to reach this cluster."""
        return {"SLURM_CONF": str(self.conf)}

    def _node(self) -> tuple[int, int]:
        """The node's CPUs and memory (MB) as ``slurmd -C`` sees them."""
        out = subprocess.run([_which("slurmd"), "-C"], capture_output=True, text=True, timeout=30).stdout
        cpus, mem = re.search(r"\bCPUs=(\d+)", out), re.search(r"\bRealMemory=(\d+)", out)
        return int(cpus.group(1)) if cpus else (os.cpu_count() or 1), int(mem.group(1)) if mem else 1024

    def _start_munge(self) -> None:
        mu = pwd.getpwnam("munge")
        self.munge_dir.mkdir(mode=0o755)
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(128))
        os.chmod(key, 0o600)
        for p in (self.munge_dir, key):
            os.chown(p, mu.pw_uid, mu.pw_gid)
        subprocess.run(["runuser", "-u", "munge", "--", _which("munged"), f"--socket={self.socket}",
                        f"--key-file={key}", f"--pid-file={self.munge_dir / 'munged.pid'}",
                        f"--log-file={self.munge_dir / 'munged.log'}", f"--seed-file={self.munge_dir / 'seed'}"],
                       check=True, capture_output=True, timeout=30)
        self._wait(lambda: self.socket.exists(), "munged socket", self.munge_dir / "munged.log")

    def _write_conf(self) -> None:
        for d in ("state", "spool", "log"):
            (self.base / d).mkdir()
        cpus, mem = self._node()
        self.ctld_port, self.slurmd_port = _free_port(), _free_port()
        self.conf.write_text(f"""\
ClusterName=gregtest
SlurmctldHost={self.node}(127.0.0.1)
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.socket}
CredType=cred/munge
StateSaveLocation={self.base / 'state'}
SlurmdSpoolDir={self.base / 'spool'}
SlurmctldPidFile={self.base / 'slurmctld.pid'}
SlurmdPidFile={self.base / 'slurmd.pid'}
SlurmctldLogFile={self.base / 'log' / 'slurmctld.log'}
SlurmdLogFile={self.base / 'log' / 'slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp}
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
KillWait={self.kill_wait}
MinJobAge=3600
SlurmctldTimeout=30
SlurmdTimeout=30
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={mem} State=UNKNOWN
PartitionName=debug Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
""")

    def start(self) -> "SlurmCluster":
        try:
            self._start_munge()
            self._write_conf()
            env = {**os.environ, **self.env()}
            for daemon in ("slurmctld", "slurmd"):
                log = open(self.base / "log" / f"{daemon}.out", "wb")
                self.procs.append(subprocess.Popen([_which(daemon), "-D", "-f", str(self.conf)], env=env,
                                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
                log.close()
                if daemon == "slurmctld":
                    self._wait(lambda: self.scontrol("ping", check=False).returncode == 0, "slurmctld",
                               self.base / "log" / "slurmctld.log")
            self._wait(self._node_idle, "node idle", self.base / "log" / "slurmd.log")
            return self
        except BaseException:
            self.stop()
            raise

    def _node_idle(self) -> bool:
        out = self.run("sinfo", "-h", "-N", "-o", "%T", check=False).stdout
        return out.strip().startswith("idle")

    def _wait(self, ok, what: str, log: Path) -> None:
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{what}: a SLURM daemon exited ({p.returncode}):\n{self.tail(log)}")
            if ok():
                return
            time.sleep(0.3)
        raise RuntimeError(f"{what} not ready after {self.timeout:.0f} s:\n{self.tail(log)}")

    @staticmethod
    def tail(path: Path, n: int = 4000) -> str:
        try:
            return path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def logs(self) -> str:
        """The daemons' log tails (for assertion messages)."""
        return "\n".join(f"--- {p.name}\n{self.tail(p, 3000)}" for p in sorted((self.base / "log").glob("*.log")))

    def stop(self) -> None:
        try:
            if self.conf.exists() and self.procs:
                subprocess.run([_which("scancel"), "--user=root", "--full"], env={**os.environ, **self.env()},
                               capture_output=True, timeout=20)
        except (subprocess.TimeoutExpired, OSError):
            pass
        for p in reversed(self.procs):  # slurmd, then slurmctld
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                    p.wait(timeout=20)
                except (ProcessLookupError, subprocess.TimeoutExpired):
                    try:
                        os.killpg(p.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    p.wait(timeout=10)
        pid = self.munge_dir / "munged.pid"
        if pid.exists():
            try:
                os.kill(int(pid.read_text().split()[0]), signal.SIGTERM)
            except (OSError, ValueError, IndexError):
                pass
        shutil.rmtree(self.base, ignore_errors=True)

    # ---------------------------------------------------------------------------------------------------- queries
    def run(self, cmd: str, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        """A SLURM client command against this cluster."""
        r = subprocess.run([_which(cmd), *args], capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, **self.env()})
        if check and r.returncode:
            raise RuntimeError(f"{cmd} {' '.join(args)} failed ({r.returncode}): {r.stderr.strip()}")
        return r

    def scontrol(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return self.run("scontrol", *args, check=check)

    def job_records(self) -> list[dict[str, str]]:
        """SLURM's record of every job that ended (the jobcomp/filetxt file): ``JobId``, ``Name``,
        ``JobState``, ``ExitCode``, ... one dict per line, in order of ending (a requeued job has a line per run)."""
        if not self.jobcomp.exists():
            return []
        out = []
        for line in self.jobcomp.read_text().splitlines():
            rec = dict(re.findall(r"(\w+)=(\S*)", line))
            if rec:
                out.append(rec)
        return out
