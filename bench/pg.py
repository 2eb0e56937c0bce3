"""A PostgreSQL for the bench: the one named by OPENSEGUR_BENCH_PG_URL, else a throwaway cluster started here.

The throwaway cluster is started as .ci/run starts the tests' one (initdb, pg_ctl on loopback and a private
socket directory), with one difference: fsync stays on. The figure is about a platform that survives a power
cut, and a PostgreSQL that does not flush its WAL would make the engine look faster than any hospital's is.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shlex
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from opensegur.server import bind

ENV = "OPENSEGUR_BENCH_PG_URL"


@dataclass
class PgCluster:
    url: str  # the maintenance database: CREATE DATABASE goes there
    data_dir: Path | None  # None when the cluster is not ours (its CPU is then not counted)


class PgUnavailable(Exception):
    """No PostgreSQL given and none can be started here: the PostgreSQL rows are skipped, for this reason."""


def _bin_dir() -> Path:
    versions = [Path(d) for d in glob.glob("/usr/lib/postgresql/*/bin") if Path(d).parent.name.isdigit()]
    found = sorted(
        (d for d in versions if (d / "initdb").exists() and (d / "pg_ctl").exists()),
        key=lambda d: int(d.parent.name),
    )
    if found:
        return Path(found[-1])
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    raise PgUnavailable(
        "pas de binaires PostgreSQL (initdb, pg_ctl) sous /usr/lib/postgresql/*/bin ni dans le PATH"
    )


def _run(argv: list[str], as_postgres: bool) -> None:
    if as_postgres:
        # initdb refuses to run as root: the cluster belongs to the postgres account, as in .ci/run.
        argv = ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(shlex.quote(a) for a in argv)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode:
        raise PgUnavailable(
            f"{' '.join(argv[:1])} a échoué ({done.returncode}) : {done.stderr.strip()[-400:]}"
        )


@contextlib.contextmanager
def pg_cluster() -> Iterator[PgCluster]:
    """The given PostgreSQL, or a throwaway cluster with fsync on, stopped and removed on exit."""
    given = os.environ.get(ENV)
    if given:
        yield PgCluster(given, None)
        return
    bindir = _bin_dir()
    as_postgres = os.geteuid() == 0
    root = Path(tempfile.mkdtemp(prefix="opensegur-bench-pg."))
    data = root / "data"
    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    sock.close()
    started = False
    try:
        if as_postgres:
            shutil.chown(root, "postgres")
        _run(
            [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "-E", "UTF8"],
            as_postgres,
        )
        options = f"-p {port} -k {root} -c listen_addresses=127.0.0.1"
        _run(
            [str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(root / "log"), "-w", "start"],
            as_postgres,
        )
        started = True
        yield PgCluster(f"postgresql://postgres@127.0.0.1:{port}/postgres", data)
    finally:
        if started:
            with contextlib.suppress(PgUnavailable):
                _run([str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"], as_postgres)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def pg_database(cluster: PgCluster) -> Iterator[str]:
    """A fresh database for one run, dropped afterwards (as the tests' conftest does)."""
    name = f"opensegur_bench_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(cluster.url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{cluster.url.rsplit('/', 1)[0]}/{name}"
    finally:
        with psycopg.connect(cluster.url, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def postgres_cpu(cluster: PgCluster) -> float | None:
    """CPU seconds of the cluster's processes: the postmaster, its live backends, and the backends it reaped
    (their time is in the postmaster's cutime/cstime). None when the cluster is not ours."""
    if cluster.data_dir is None:
        return None
    try:
        postmaster = int((cluster.data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid, ppid = int(entry.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(f) for f in fields[11:15]) / tick
        elif ppid == postmaster:
            total += (int(fields[11]) + int(fields[12])) / tick
    return total
