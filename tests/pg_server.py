"""Test helpers: a throw-away PostgreSQL cluster and an MLflow server started by tools/mlflow_server.sh.

PostgreSQL refuses to run as root, so under root every server binary runs as the ``postgres`` OS user
(``runuser -u postgres --``) in a temporary folder that user owns; the unix socket lives there too, and TCP listens on
127.0.0.1 only. Everything is bounded in time and torn down by ``stop()`` (also after a failed start).
"""
from __future__ import annotations

import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "tools" / "mlflow_server.sh"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bindir() -> Optional[Path]:
    """The newest /usr/lib/postgresql/<ver>/bin holding initdb and pg_ctl (Debian layout), else the PATH's."""
    cands = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                   if Path(p).parent.name.isdigit() else 0, reverse=True)
    for c in cands:
        if os.access(Path(c) / "initdb", os.X_OK) and os.access(Path(c) / "pg_ctl", os.X_OK):
            return Path(c)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl and Path(initdb).parent == Path(pg_ctl).parent:
        return Path(initdb).parent
    return None


def why_unavailable() -> Optional[str]:
    """None when a PostgreSQL test cluster can be started here, else the reason (for pytest.skip)."""
    if pg_bindir() is None:
        return "PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql"
    if shutil.which("psql") is None:
        return "psql not found; apt-get install postgresql-client"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root but there is no 'postgres' OS user to run PostgreSQL as"
        if shutil.which("runuser") is None:
            return "running as root but runuser(1) is missing"
    return None


class PgCluster:
    """initdb + pg_ctl start on 127.0.0.1:<port>; local socket connections are trusted, TCP needs a password."""

    def __init__(self, timeout: float = 30.0):
        self.bindir = pg_bindir()
        self.timeout = timeout
        self.as_postgres = os.geteuid() == 0
        self.base = Path(tempfile.mkdtemp(prefix="greg-ood-pg-"))
        self.data = self.base / "data"
        self.sock = self.base / "sock"
        self.log = self.base / "postgres.log"
        self.port: Optional[int] = None
        self.started = False
        self.sock.mkdir()
        if self.as_postgres:
            pw = pwd.getpwnam("postgres")
            for p in (self.base, self.sock):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        os.chmod(self.base, 0o700)

    def _cmd(self, *argv: str) -> list[str]:
        return (["runuser", "-u", "postgres", "--"] if self.as_postgres else []) + list(argv)

    def _run(self, *argv: str, timeout: Optional[float] = None) -> subprocess.CompletedProcess:
        r = subprocess.run(self._cmd(*argv), capture_output=True, text=True, timeout=timeout or self.timeout,
                           cwd=self.base, env={**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"})
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}\n{self.log_tail()}")
        return r

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def start(self) -> "PgCluster":
        self._run(str(self.bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                  "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions", "--no-sync")
        last: Exception = RuntimeError("not started")
        for _ in range(3):  # the free port can be taken between free_port() and the bind: try another
            self.port = free_port()
            opts = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.sock} "
                    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=40")
            try:
                self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-o", opts,
                          "-w", "-t", str(int(self.timeout)), "start", timeout=self.timeout + 10)
                self.started = True
                return self
            except (RuntimeError, subprocess.TimeoutExpired) as e:
                last = e
                self._stop_cluster()
        raise RuntimeError(f"PostgreSQL did not start: {last}")

    def env(self) -> dict[str, str]:
        """libpq variables for the superuser's local-socket connection (what --init-db uses)."""
        return {"PGHOST": str(self.sock), "PGPORT": str(self.port)}

    def psql(self, db: str, sql: str) -> str:
        """Run one statement as the superuser over the local socket; unaligned, tuples-only output."""
        psql = self.bindir / "psql" if (self.bindir / "psql").exists() else Path(shutil.which("psql") or "psql")
        return self._run(str(psql), "-X", "-h", str(self.sock), "-p", str(self.port), "-U", "postgres", "-d", db,
                         "-Atc", sql).stdout

    def _stop_cluster(self) -> None:
        if not (self.data / "postmaster.pid").exists():
            return
        try:
            subprocess.run(self._cmd(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w",
                                     "-t", "20", "stop"), capture_output=True, timeout=30, cwd=self.base)
        except subprocess.TimeoutExpired:
            pass
        pidfile = self.data / "postmaster.pid"
        if pidfile.exists():  # still up: immediate shutdown of the postmaster (it takes its children along)
            try:
                os.kill(int(pidfile.read_text().split()[0]), signal.SIGQUIT)
                time.sleep(1)
            except (OSError, ValueError, IndexError):
                pass

    def stop(self) -> None:
        try:
            self._stop_cluster()
        finally:
            shutil.rmtree(self.base, ignore_errors=True)


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


class MlflowServer:
    """tools/mlflow_server.sh in its own process group, logging to a file; stop(): SIGTERM, then SIGKILL."""

    def __init__(self, env: dict[str, str], workdir: Path, port: Optional[int] = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "mlflow-server.log"
        self.env = env
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 60.0) -> "MlflowServer":
        with open(self.log, "wb") as fh:
            self.proc = subprocess.Popen(["bash", str(SCRIPT), "--port", str(self.port), "--workers", "1"],
                                         env=self.env, stdout=fh, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True, cwd=self.log.parent)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.3)
        raise RuntimeError(f"mlflow server not healthy after {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        return _tail(self.log, n)

    def stop(self, grace: float = 10.0) -> None:
        if self.proc is None:
            return
        try:
            pgid = os.getpgid(self.proc.pid)
        except ProcessLookupError:
            pgid = None
        if pgid is not None:
            try:
                os.killpg(pgid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
        if pgid is not None:  # workers that outlived the main process, or a main process that ignored SIGTERM
            try:
                os.killpg(pgid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    # --- REST ---------------------------------------------------------------------------------------------------
    def get(self, endpoint: str, **query) -> bytes:
        url = self.url + endpoint + ("?" + urllib.parse.urlencode(query) if query else "")
        with urllib.request.urlopen(url, timeout=15) as r:
            return r.read()

    def get_json(self, endpoint: str, **query) -> dict:
        return json.loads(self.get(endpoint, **query))

    def post_json(self, path: str, body: dict) -> dict:
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=15) as r:
            return json.loads(r.read())
