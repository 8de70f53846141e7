"""A private, throw-away PostgreSQL cluster for tests (initdb + pg_ctl in a temp folder, as the
``postgres`` user when we are root). Used by the records tests and the database fault tests.

``running_cluster(prefix)`` skips the test, with the reason, when PostgreSQL is not installed
(Debian: ``apt-get install -y postgresql``) or the cluster cannot be started.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass

import pytest


def pg_bin(name: str) -> str | None:
    """A PostgreSQL server program on PATH or in Debian's versioned folder."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class PgCluster:
    """A private PostgreSQL cluster that a test may stop and start again (same port)."""

    root: str
    data: str
    port: int
    pg_ctl: str
    prefix: list[str]

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            [*self.prefix, self.pg_ctl, "-D", self.data, *args],
            check=True, capture_output=True, timeout=90,
        )

    def start(self) -> None:
        self._ctl(
            "-l", os.path.join(self.root, "pg.log"), "-w", "-t", "60", "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off", "start",
        )

    def stop(self) -> None:
        self._ctl("-m", "immediate", "-w", "stop")


@contextlib.contextmanager
def running_cluster(prefix: str = "stepcall-pg-") -> Iterator[PgCluster]:
    """Create and start a cluster (trust auth on 127.0.0.1); stop and delete it afterwards."""
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    run_as: list[str] = []
    user = None
    if os.geteuid() == 0:  # initdb refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run PostgreSQL as")
        run_as = ["runuser", "-u", "postgres", "--"]
    root = tempfile.mkdtemp(prefix=prefix)
    if user is not None:
        os.chown(root, user.pw_uid, user.pw_gid)
    cluster = PgCluster(root, os.path.join(root, "data"), free_port(), pg_ctl, run_as)
    try:
        subprocess.run(
            [*run_as, initdb, "-D", cluster.data, "-A", "trust", "-U", "postgres", "--no-sync"],
            check=True, capture_output=True, timeout=120,
        )
        cluster.start()
    except (subprocess.SubprocessError, OSError) as e:
        detail = getattr(e, "stderr", b"") or b""
        shutil.rmtree(root, ignore_errors=True)
        pytest.skip(f"could not start a PostgreSQL cluster: {e} {detail.decode()[-500:]}")
    try:
        yield cluster
    finally:
        with contextlib.suppress(Exception):
            cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
