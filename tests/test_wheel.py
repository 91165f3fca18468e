"""The built wheel, installed into a fresh virtual environment, creates and fits an index.

Proves the Alembic revisions ship inside the wheel (as ``semid_index._migrations``) and that
nothing depends on the source checkout. Slow (about a minute: torch is installed into the new
environment from the local wheel cache); CI runs it.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent("""
    import sys, numpy as np, semid_index
    from semid_index import SemanticIdIndex
    from semid_index.storage import script_location
    assert "site-packages" in semid_index.__file__, semid_index.__file__
    assert script_location().name == "_migrations", script_location()
    x = np.random.default_rng(0).normal(size=(400, 8)).astype("float32")
    with SemanticIdIndex.create(f"sqlite:///{sys.argv[1]}", "wheel", n_levels=2,
                                codebook_size=4) as idx:
        idx.fit([f"k{i}" for i in range(400)], x)
        print(idx.lookup("k0"), idx.count())
""")


@pytest.mark.slow
def test_wheel_installs_into_a_fresh_venv_and_creates_an_index(tmp_path):
    dist, venv = tmp_path / "dist", tmp_path / "venv"

    def run(*cmd, **kw):
        out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
        assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
        return out.stdout

    run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", dist, ROOT)
    wheel = next(dist.glob("semid_index-*.whl"))
    run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    run(py, "-m", "pip", "install", "-q", "torch==2.13.0")  # the CPU build, before the package
    run(py, "-m", "pip", "install", "-q", wheel)
    (tmp_path / "check.py").write_text(SCRIPT)
    db = tmp_path / "fresh.db"
    out = run(py, tmp_path / "check.py", db, cwd=tmp_path)  # not the checkout: the wheel
    sid, count = out.split()
    assert count == "400" and sid.count("-") == 2
    assert db.stat().st_size > 0
    # the console script comes with the wheel and reads the index the library wrote
    out = run(venv / "bin" / "semid", "stats", "--db", f"sqlite:///{db}", "--index", "wheel",
              "--json", cwd=tmp_path)
    assert '"items": 400' in out
