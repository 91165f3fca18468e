"""The built wheel, installed into a fresh virtual environment, creates and fits an index.

Proves the Alembic revisions ship inside the wheel (as ``semid_index._migrations``), that the seed
module's import name ``semantic_id_module`` ships too, and that nothing depends on the source
checkout. Slow (about a minute: torch is installed into the new environment from the local wheel
cache); CI runs it.
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

# The seed README's Quick Start, import line as written, run against the installed wheel.
SEED_SCRIPT = textwrap.dedent("""
    import importlib.util, numpy as np, torch
    from semantic_id_module import ResidualQuantization, MiniBatchKMeans, SquaredEuclideanDistance, KMeansPlusPlusInitInitializer
    import semantic_id_module, semid_index.compat
    assert "site-packages" in semantic_id_module.__file__, semantic_id_module.__file__
    assert ResidualQuantization is semid_index.compat.ResidualQuantization
    # the alias ships only under its top-level name, not as a second copy inside semid_index
    assert importlib.util.find_spec("semid_index._seed_module") is None

    rng = np.random.default_rng(0)
    centers = rng.normal(size=(10, 8)) * 4
    embeddings = torch.from_numpy(
        (centers[rng.integers(0, 10, 4000)] + rng.normal(size=(4000, 8))).astype("float32"))

    # Create model (the README's "..." filled in: a layer of 8 clusters over 8-d embeddings)
    distance = SquaredEuclideanDistance()
    seeding = KMeansPlusPlusInitInitializer(n_clusters=8, distance_function=distance)
    layer = MiniBatchKMeans(n_clusters=8, n_features=8, distance_function=distance,
                            initializer=seeding)
    model = ResidualQuantization(n_layers=3, quantization_layer=layer, normalize_residuals=True,
                                 train_layer_wise=True)

    # Train
    model.train()
    for epoch in range(8):
        for start in range(0, len(embeddings), 1000):
            model.training_step(embeddings[start:start + 1000])

    # Inference
    model.eval()
    predictions = model.predict_step(embeddings)
    print(tuple(predictions.shape), predictions.dtype)
    print(int(predictions.min()), int(predictions.max()))
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
    assert '"n_items": 400' in out
    # the seed module's import name comes with the wheel too: its README snippet runs as written
    (tmp_path / "seed_readme.py").write_text(SEED_SCRIPT)
    out = run(py, tmp_path / "seed_readme.py", cwd=tmp_path)
    shape_line, range_line = out.strip().splitlines()
    assert shape_line == "(4000, 3) torch.int64", out
    lo, hi = map(int, range_line.split())
    assert 0 <= lo <= hi <= 7, out
