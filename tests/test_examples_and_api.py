"""Examples run end to end; the public surface is explicit; the package imports cheaply."""

import subprocess
import sys
from pathlib import Path

import semid_index
import semid_index.quantize

ROOT = Path(__file__).resolve().parents[1]


def run(*args, cwd):
    return subprocess.run([sys.executable, *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, check=True, timeout=600).stdout


def test_train_then_inference_examples(tmp_path):
    out = run(ROOT / "examples/train_example.py", "--limit", "30000", "--out", "cb.npz",
              cwd=tmp_path)
    assert "semantic IDs: (30000, 3)" in out and (tmp_path / "cb.npz").exists()
    out = run(ROOT / "examples/inference_example.py", "--codebooks", "cb.npz", "--limit",
              "30000", cwd=tmp_path)
    assert "assigned 30000 semantic IDs" in out
    if "synthetic" not in out:  # real GloVe words: each listed word prints its neighbours
        assert "king" in out and "shares 2 levels with" in out


def test_public_names():
    assert set(semid_index.__all__) >= {
        "ResidualKMeans", "ResidualQuantization", "MiniBatchKMeans", "SquaredEuclideanDistance",
        "KMeansPlusPlusInitInitializer", "SemanticIdError", "NotFittedError"}
    for name in semid_index.__all__:
        assert getattr(semid_index, name) is not None
    for name in semid_index.quantize.__all__:
        assert getattr(semid_index.quantize, name) is not None


def test_import_semid_index_does_not_import_torch():
    code = "import sys, semid_index, semid_index.errors; print('torch' in sys.modules)"
    assert run("-c", code, cwd=ROOT).strip() == "False"


def test_quantize_never_imports_the_database_layer():
    code = ("import sys, semid_index.quantize, semid_index.compat; "
            "print(any(m.split('.')[0] in ('sqlalchemy', 'alembic', 'psycopg') for m in sys.modules))")
    assert run("-c", code, cwd=ROOT).strip() == "False"
