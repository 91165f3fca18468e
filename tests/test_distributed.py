"""Data-parallel training with torch.distributed (gloo): ranks in separate processes, each with
its own shard, get what one process gets from all the rows; a failure on any rank fails every
rank and writes nothing."""

import json
import os
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest

from semid_index import SemanticIdIndex
from semid_index.quantize import ResidualKMeans

from conftest import ROOT, dump_tables, gaussian_mixture, semid

WORKER = os.path.join(ROOT, "tests", "dist_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(spec: dict, n_ranks: int) -> list[subprocess.Popen]:
    """The ranks of one job, as torchrun would start them (without its agent, so that every
    rank's own outcome can be read)."""
    env = dict(os.environ, PYTHONPATH=ROOT, MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(_free_port()), WORLD_SIZE=str(n_ranks), OMP_NUM_THREADS="1")
    return [subprocess.Popen([sys.executable, WORKER, json.dumps(spec)],
                             env=dict(env, RANK=str(r), LOCAL_RANK=str(r)),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for r in range(n_ranks)]


def _outcomes(ranks: list[subprocess.Popen]) -> list[tuple[int, str, str]]:
    out = []
    for p in ranks:
        o, e = p.communicate(timeout=300)
        out.append((p.returncode, o, e))
    return out


def _data(tmp_path, n=12_000, d=16, seed=5):
    """A skewed mixture with a few far outliers (k-means++ seeds codes on some; they rarely
    come back in a mini-batch, so those codes die and are re-seeded)."""
    x, _ = gaussian_mixture(n, d, 40, seed=seed, skew=1.0)
    x[::150] = np.random.default_rng(seed).standard_normal((len(x[::150]), d)) * 60
    np.save(tmp_path / "x.npy", x)
    return x


@pytest.mark.parametrize("layer_wise, regime", [
    (True, "exact"), (True, "mini-batch"), (True, "warm-start"), (False, "exact"),
    (False, "mini-batch")])  # (given centroids need the layer-wise mode)
def test_two_ranks_train_what_one_process_trains(tmp_path, layer_wise, regime):
    x = _data(tmp_path)
    opts = dict(n_levels=3, codebook_size=48, seed=3, train_layer_wise=layer_wise)
    if regime == "mini-batch":  # small batches: many steps, and dead centroids get re-seeded
        opts.update(exact_work=0, batch_size=256)
    cuts = [0, 4_000, len(x)]  # shards of different sizes
    spec = {"data": str(tmp_path / "x.npy"), "cuts": cuts, "what": "quantizer", "opts": opts,
            "out": str(tmp_path / "rank"), "init_far": regime == "warm-start"}
    for code, out, err in _outcomes(_start(spec, 2)):
        assert code == 0 and out.strip().endswith("ok"), out + err
    if regime == "warm-start":  # four empty codes per level, re-seeded by Lloyd
        from dist_worker import far_init

        opts["init"] = far_init(str(tmp_path / "x.npy"), 3, 48)
    one = ResidualKMeans(**opts).fit(x)
    got = [np.load(tmp_path / f"rank.{r}.npz") for r in range(2)]
    for lv in range(3):
        books = [g[f"arr_{lv}"] for g in got]
        assert np.array_equal(books[0], books[1])  # every rank ends with the same codebooks
        # float64 sums make the reduction order irrelevant: one process's codebooks, to float32
        # rounding at most
        np.testing.assert_allclose(books[0], one.codebooks_[lv].numpy(), rtol=0, atol=1e-5)
    dist_model = ResidualKMeans.from_codebooks([got[0][f"arr_{lv}"] for lv in range(3)])
    same = (dist_model.encode(x) == one.encode(x)).all(1).float().mean().item()
    assert same >= 0.999, same
    assert np.array_equal(got[0]["reassigned"], [h.reassigned for h in one.history_])
    if regime != "exact":
        assert got[0]["reassigned"].sum() > 0  # the re-seeding paths were exercised


def test_an_error_on_one_rank_fails_every_rank(tmp_path):
    _data(tmp_path, n=3_000)
    base = {"data": str(tmp_path / "x.npy"), "cuts": [0, 1_500, 3_000], "what": "quantizer",
            "opts": {"n_levels": 2, "codebook_size": 16}, "out": str(tmp_path / "r")}
    (c0, o0, e0), (c1, o1, e1) = _outcomes(_start(dict(base, nan_rank=1), 2))
    assert c1 == 1 and "error NonFiniteError" in o1, o1 + e1  # the rank's own error
    assert c0 == 1 and "error DistributedError: rank 1 failed: NonFiniteError" in o0, o0 + e0
    assert "row 750" in o0  # the other ranks see the message too
    (c0, o0, _), (c1, o1, _) = _outcomes(_start(dict(base, seed_rank=0), 2))
    assert c0 == c1 == 1 and "different seeds or options" in o0 and "[1, 0]" in o1
    assert not list(tmp_path.glob("r.*.npz"))  # nobody finished


def test_a_rank_with_no_rows_takes_part(tmp_path):
    x = _data(tmp_path, n=6_000)
    opts = dict(n_levels=2, codebook_size=32, seed=2, exact_work=0, batch_size=512)
    spec = {"data": str(tmp_path / "x.npy"), "cuts": [0, 2_500, 2_500, 6_000],
            "what": "quantizer", "opts": opts, "out": str(tmp_path / "rank")}
    for code, out, err in _outcomes(_start(spec, 3)):
        assert code == 0 and out.strip().endswith("ok"), out + err
    one = ResidualKMeans(**opts).fit(x)
    for r in range(3):
        got = np.load(tmp_path / f"rank.{r}.npz")
        for lv in range(2):
            np.testing.assert_allclose(got[f"arr_{lv}"], one.codebooks_[lv].numpy(), atol=1e-5)


def test_a_malformed_shard_fails_every_rank_at_once(tmp_path):
    _data(tmp_path, n=3_000)
    spec = {"data": str(tmp_path / "x.npy"), "cuts": [0, 1_500, 3_000], "what": "quantizer",
            "opts": {"n_levels": 2, "codebook_size": 16}, "out": str(tmp_path / "r"),
            "flat_rank": 1}
    (c0, o0, e0), (c1, o1, e1) = _outcomes(_start(spec, 2))
    assert c1 == 1 and "error DimensionMismatchError" in o1, o1 + e1
    assert c0 == 1 and "rank 1 failed: DimensionMismatchError" in o0, o0 + e0


def test_distributed_fit_needs_a_process_group():
    x, _ = gaussian_mixture(200, 4, 3)
    with pytest.raises(Exception, match="initialised torch.distributed process group"):
        ResidualKMeans(1, 4).fit(x, distributed=True)


def test_cli_fit_under_torchrun_equals_one_process(db_url, tmp_path):
    x = _data(tmp_path, n=10_000)
    (tmp_path / "k.txt").write_text("".join(f"item-{i}\n" for i in range(len(x))))
    args = [tmp_path / "x.npy", "--keys", tmp_path / "k.txt", "-k", "32", "--seed", "2"]
    semid("fit", *args, "-i", "single", db=db_url)
    env = dict(os.environ, PYTHONPATH=ROOT, SEMID_DB=db_url, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", "-m", "semid_index", "fit",
                        *map(str, args), "-i", "ranks", "--distributed"],
                       env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stdout.count("fitted version 1 of 'ranks': 10,000 items") == 1  # rank 0 prints
    with SemanticIdIndex.open(db_url, "single") as a, SemanticIdIndex.open(db_url, "ranks") as b:
        ka, ia = a.id_arrays()
        kb, ib = b.id_arrays()
        assert sorted(ka) == sorted(kb) and len(kb) == 10_000
        assert len({tuple(r) for r in ib.tolist()}) == 10_000  # full IDs unique
        ca = dict(zip(ka, map(tuple, ia.tolist())))
        cb = dict(zip(kb, map(tuple, ib.tolist())))
        same = sum(ca[k][:-1] == cb[k][:-1] for k in ka) / len(ka)
        assert same >= 0.999, same
        for lv in range(3):
            np.testing.assert_allclose(a.model.codebooks_[lv], b.model.codebooks_[lv], atol=1e-5)
        assert b.code_report()["fit"]["ranks"] == 2
        # the fingerprints came through: the same items again keep their IDs (no conflict)
        some = [f"item-{i}" for i in (0, 4_999, 5_000, 9_999)]
        assert b.add(some, x[[0, 4_999, 5_000, 9_999]]) == b.lookup_many(some)


def test_a_rank_dying_mid_fit_fails_the_fit_and_writes_nothing(db_url, tmp_path):
    x = _data(tmp_path, n=60_000, d=32)
    with SemanticIdIndex.create(db_url, "idx", n_levels=3, codebook_size=64) as idx:
        idx.fit([f"old-{i}" for i in range(2_000)], x[:2_000], progress=False)
    before = dump_tables(db_url)
    spec = {"data": str(tmp_path / "x.npy"), "cuts": [0, 30_000, 60_000], "what": "index",
            "db": db_url, "index": "idx"}
    ranks = _start(spec, 2)
    assert ranks[1].stdout.readline().strip() == "fitting"
    ranks[1].send_signal(signal.SIGKILL)  # wherever it is now: in a collective or training
    code, out, err = _outcomes(ranks)[0]
    assert code == 1 and "error DistributedError" in out, out + err
    assert "another rank failed or left" in out
    assert dump_tables(db_url) == before  # nothing was written


def test_a_key_on_two_ranks_fails_every_rank_and_writes_nothing(db_url, tmp_path):
    _data(tmp_path, n=4_000)
    SemanticIdIndex.create(db_url, "idx", n_levels=2, codebook_size=16).close()
    before = dump_tables(db_url)
    spec = {"data": str(tmp_path / "x.npy"), "cuts": [0, 2_000, 4_000], "what": "index",
            "db": db_url, "index": "idx", "dup_rank": 1}
    (c0, o0, e0), (c1, o1, e1) = _outcomes(_start(spec, 2))
    assert c0 == 1 and "error DuplicateKeyError" in o0 and "item-0" in o0, o0 + e0
    assert c1 == 1 and "rank 0 failed: DuplicateKeyError" in o1, o1 + e1
    assert dump_tables(db_url) == before


def test_cli_distributed_outside_torchrun_is_a_clear_error(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((10, 4), dtype=np.float32))
    code, _, err = semid("fit", tmp_path / "x.npy", "--row-numbers", "--distributed",
                         db=f"sqlite:///{tmp_path / 'a.db'}", check=False)
    assert code == 1 and "torchrun" in err and "Traceback" not in err
    assert not (tmp_path / "a.db").exists()


def test_distributed_example_runs_under_torchrun(tmp_path):
    # SQLite only: the CLI test above runs the same path under torchrun on PostgreSQL too
    db_url = f"sqlite:///{tmp_path / 'example.db'}"
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc-per-node", "2", os.path.join(ROOT, "examples",
                                                              "distributed_example.py"),
                        "--db", db_url, "--limit", "20000"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "rank 0: items 0-10,000 of 20,000; version 1 holds 20,000 items" in p.stdout
    assert "rank 1: items 10,000-20,000 of 20,000; version 1 holds 20,000 items" in p.stdout
    assert "codebooks identical; 100.00% of words have the same codes" in p.stdout, p.stdout
