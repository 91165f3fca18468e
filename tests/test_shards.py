"""Distributed assignment: N worker processes (``semid add --shard I/N``) fill one index
together and get what one process gets."""

import os
import subprocess
import sys

import numpy as np

from semid_index import SemanticIdIndex

from conftest import ROOT, assert_one_line_error, gaussian_mixture, semid


def test_four_shard_workers_equal_one_process(db_url, tmp_path):
    x, _ = gaussian_mixture(6000, 16, 40, seed=3)
    keys = [f"item-{i}" for i in range(len(x))]
    np.save(tmp_path / "all.npy", x[1000:])
    (tmp_path / "all.txt").write_text("".join(k + "\n" for k in keys[1000:]))
    for name in ("shards", "single"):  # the same fit twice: identical codebooks
        idx = SemanticIdIndex.create(db_url, name, n_levels=3, codebook_size=8, seed=1)
        idx.fit(keys[:1000], x[:1000], progress=False)
        idx.close()
    env = dict(os.environ, PYTHONPATH=str(ROOT), SEMID_DB=db_url)
    workers = [subprocess.Popen(
        [sys.executable, "-m", "semid_index", "add", str(tmp_path / "all.npy"), "--keys",
         str(tmp_path / "all.txt"), "-i", "shards", "--shard", f"{i}/4", "--batch", "400"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(4)]
    for w in workers:
        out, err = w.communicate(timeout=300)
        assert w.returncode == 0, err
        assert "1,250 items assigned IDs" in out
    semid("add", tmp_path / "all.npy", "--keys", tmp_path / "all.txt", "-i", "single", db=db_url)
    with SemanticIdIndex.open(db_url, "shards") as a, SemanticIdIndex.open(db_url, "single") as b:
        ka, ia = a.id_arrays()
        kb, ib = b.id_arrays()
        assert a.count() == b.count() == 6000 and sorted(ka) == sorted(kb)  # nothing lost
        assert len({tuple(r) for r in ia.tolist()}) == 6000  # every full ID unique
        codes_a = dict(zip(ka, map(tuple, ia[:, :-1].tolist())))
        codes_b = dict(zip(kb, map(tuple, ib[:, :-1].tolist())))
        assert codes_a == codes_b  # same codes for every item; suffixes may be numbered apart
        sizes_a = np.unique(ia[:, :-1], axis=0, return_counts=True)[1]
        assert int(ia[:, -1].max()) + 1 == int(sizes_a.max())  # suffixes 0..n-1, no gaps


def test_shard_and_batch_arguments_are_checked(tmp_path):
    db = f"sqlite:///{tmp_path / 'x.db'}"
    np.save(tmp_path / "e.npy", np.zeros((3, 4), dtype=np.float32))
    for bad in ("4/4", "1", "-1/2", "a/b"):
        code, _, err = semid("add", tmp_path / "e.npy", "--row-numbers", "--shard", bad, db=db,
                             check=False)
        assert_one_line_error(code, err, "--shard")
    (tmp_path / "k.txt").write_text("a\nb\n")
    code, _, err = semid("add", tmp_path / "e.npy", "--keys", tmp_path / "k.txt", "--shard",
                         "0/2", db=db, check=False)
    assert_one_line_error(code, err, "2 keys for 3")
