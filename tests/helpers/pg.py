"""A throw-away PostgreSQL server for tests: Debian's ``postgresql`` binaries, a cluster in a temp directory.

``start_postgres()`` finds ``initdb``/``pg_ctl`` (installing the Debian package with
``apt-get install -y postgresql`` when they are missing and we are root), creates a
cluster in a fresh temp directory (owned by the ``postgres`` user when running as
root, since the server refuses to run as root), starts it on 127.0.0.1 on a free
port with trust authentication, and creates a database.  ``stop()`` shuts it down
and removes the directory.  Any failure raises :class:`PostgresUnavailable` with
what was tried, so a test fails with a clear message instead of skipping.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = ["PostgresUnavailable", "PostgresServer", "start_postgres", "find_bindir"]


class PostgresUnavailable(RuntimeError):
    """The PostgreSQL server could not be installed or started; the message says what failed."""


def find_bindir() -> Path | None:
    """The directory holding ``initdb`` and ``pg_ctl`` (newest Debian version first), or ``None``."""
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name)
                    if Path(p).parent.name.isdigit() else 0, reverse=True):
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(os.path.join(d, "pg_ctl"), os.X_OK):
            return Path(d)
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return Path(os.path.realpath(initdb)).parent
    return None


def _apt_install() -> str:
    """``apt-get install -y postgresql`` (after ``apt-get update`` if the first try fails); returns the log."""
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", "postgresql"]
    log = ""
    for attempt in range(2):
        if attempt == 1:
            up = subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, timeout=600)
            log += up.stdout[-2000:] + up.stderr[-2000:]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        log += r.stdout[-2000:] + r.stderr[-2000:]
        if r.returncode == 0:
            return log
    raise PostgresUnavailable(f"`{' '.join(cmd)}` failed (also after apt-get update):\n{log}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PostgresServer:
    """A running server: ``url`` is the SQLAlchemy URL of its test database."""

    bindir: Path
    root: Path
    port: int
    dbname: str
    user: str
    run_as: str | None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    def _run(self, args, **kw):
        return subprocess.run(args, user=self.run_as, capture_output=True, text=True, **kw)

    def stop(self) -> None:
        self._run([str(self.bindir / "pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop"],
                  timeout=60)
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(dbname: str = "tfftmol_test", install: bool = True) -> PostgresServer:
    """Install (if needed), initialise, start and create ``dbname``; see the module docstring."""
    bindir = find_bindir()
    if bindir is None:
        if not install:
            raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found")
        if os.geteuid() != 0:
            raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl) not found and not root: "
                                      "install Debian's `postgresql` package (apt-get install -y postgresql)")
        _apt_install()
        bindir = find_bindir()
        if bindir is None:
            raise PostgresUnavailable("apt-get installed postgresql but initdb/pg_ctl are still not found "
                                      "under /usr/lib/postgresql/*/bin or on PATH")
    run_as = None
    user = pwd.getpwuid(os.geteuid()).pw_name
    root = Path(tempfile.mkdtemp(prefix="tfftmol-pg-"))
    if os.geteuid() == 0:  # the server refuses to run as root: use the package's `postgres` account
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root but there is no `postgres` user to run the server "
                                      "(Debian's postgresql package creates it)") from None
        run_as, user = "postgres", "postgres"
        os.chmod(root, 0o755)
        os.chown(root, pw.pw_uid, pw.pw_gid)
    srv = PostgresServer(bindir, root, _free_port(), dbname, user, run_as)
    data, logf = root / "data", root / "server.log"
    r = srv._run([str(bindir / "initdb"), "-D", str(data), "-U", user, "--auth=trust", "-E", "UTF8",
                  "--locale=C", "--no-sync"], timeout=120)
    if r.returncode != 0:
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailable(f"initdb failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}")
    opts = f"-h 127.0.0.1 -p {srv.port} -k {root} -c fsync=off -c max_connections=100"
    r = srv._run([str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-l", str(logf), "-w", "-t", "60", "start"],
                 timeout=90)
    if r.returncode != 0:
        log = logf.read_text()[-3000:] if logf.exists() else ""
        shutil.rmtree(root, ignore_errors=True)
        raise PostgresUnavailable(f"pg_ctl start failed:\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}\n{log}")
    try:
        import psycopg2

        deadline = time.time() + 30
        while True:
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=srv.port, user=user, dbname="postgres")
                break
            except psycopg2.OperationalError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{dbname}"')
        conn.close()
    except Exception as e:
        srv.stop()
        raise PostgresUnavailable(f"could not create database {dbname!r}: {e}") from e
    return srv
