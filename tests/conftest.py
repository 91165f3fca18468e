import numpy as np
import pytest


def gaussian_mixture(n, d, n_clusters, *, spread=4.0, noise=1.0, seed=0, skew=0.0):
    """(n, d) float32 mixture; cluster sizes follow a power law of exponent ``skew``."""
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((n_clusters, d)).astype(np.float32) * spread
    weights = 1.0 / np.arange(1, n_clusters + 1) ** skew
    labels = rng.choice(n_clusters, size=n, p=weights / weights.sum())
    x = centers[labels] + noise * rng.standard_normal((n, d)).astype(np.float32)
    return x.astype(np.float32), labels


@pytest.fixture(scope="session")
def mixture():
    x, _ = gaussian_mixture(6000, 24, 40, seed=1)
    return x


# ---------------------------------------------------------------------------- databases
# Every storage/index test runs on a real SQLite file and on a real PostgreSQL server.
# SEMID_TEST_PG_URL names a database whose role may CREATE DATABASE and is in pg_signal_backend
# (dropping a test database WITH (FORCE) may have to end an autovacuum worker on it); each test
# gets a fresh database of its own. With SEMID_REQUIRE_PG=1 (set by .ci/run) a missing or
# unreachable server fails the test instead of skipping it.
import os
import uuid

BACKENDS = ["sqlite", "postgresql"]


def _pg_base_url():
    url = os.environ.get("SEMID_TEST_PG_URL")
    required = os.environ.get("SEMID_REQUIRE_PG") == "1"
    if not url:
        if required:
            pytest.fail("SEMID_REQUIRE_PG=1 but SEMID_TEST_PG_URL is not set")
        pytest.skip("PostgreSQL tests need SEMID_TEST_PG_URL (bash .ci/run sets it)")
    return url, required


class PgDatabases:
    """Creates and drops throw-away databases on the test server."""

    def __init__(self):
        from sqlalchemy import create_engine, make_url

        url, required = _pg_base_url()
        self.base = make_url(url)
        self.admin = create_engine(self.base, isolation_level="AUTOCOMMIT", pool_size=1)
        try:
            with self.admin.connect() as c:
                c.exec_driver_sql("select 1")
        except Exception as e:  # noqa: BLE001 - any connection failure
            self.admin.dispose()
            msg = f"PostgreSQL at {self.base.render_as_string()} is unreachable: {e}"
            if required:
                pytest.fail(msg)
            pytest.skip(msg)

    def create(self) -> str:
        name = "semid_t_" + uuid.uuid4().hex[:12]
        with self.admin.connect() as c:
            c.exec_driver_sql(f'CREATE DATABASE "{name}"')
        return self.base.set(database=name).render_as_string(hide_password=False)

    def drop(self, url: str) -> None:
        from sqlalchemy import make_url

        name = make_url(url).database
        with self.admin.connect() as c:
            c.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def pg_databases():
    dbs = PgDatabases()
    yield dbs
    dbs.admin.dispose()


@pytest.fixture(params=BACKENDS)
def db_url(request, tmp_path):
    """A URL of an empty database: a new SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'index.db'}"
        return
    dbs = request.getfixturevalue("pg_databases")
    url = dbs.create()
    yield url
    dbs.drop(url)


def dump_tables(url: str) -> dict:
    """Every row of every semid_ table (sorted), to compare database states."""
    from sqlalchemy import create_engine, inspect, text

    engine = create_engine(url)
    try:
        with engine.connect() as c:
            names = sorted(t for t in inspect(c).get_table_names() if t.startswith("semid_"))
            return {t: sorted(tuple(map(_plain, r)) for r in c.execute(text(f"SELECT * FROM {t}")))
                    for t in names}
    finally:
        engine.dispose()


def _plain(v):
    return bytes(v) if isinstance(v, memoryview) else v


# ---------------------------------------------------------------------------- the command
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def semid(*args, db=None, cwd=None, check=True, env=None):
    """Run ``python -m semid_index ARGS`` (str or bytes arguments) in a subprocess; (exit
    status, stdout, stderr)."""
    import subprocess
    import sys

    run_env = dict(os.environ, PYTHONPATH=ROOT, COLUMNS="200", **(env or {}))
    if db is not None:
        run_env["SEMID_DB"] = db
    argv = [a if isinstance(a, bytes) else str(a) for a in args]
    p = subprocess.run([sys.executable, "-m", "semid_index", *argv], env=run_env,
                       capture_output=True, text=True, errors="replace", cwd=cwd, timeout=300)
    if check and p.returncode != 0:
        raise AssertionError(f"semid {' '.join(map(str, args))} failed ({p.returncode}):\n"
                             f"{p.stderr}")
    return p.returncode, p.stdout, p.stderr


def assert_one_line_error(code: int, err: str, message: str = "") -> None:
    """The command failed the way the CLI promises: exit 1, one line on stderr, no traceback."""
    lines = err.strip().splitlines()
    assert code == 1, err
    assert len(lines) == 1 and lines[0].startswith("semid: error: "), err
    assert "Traceback" not in err
    assert message in lines[0], (message, lines[0])
