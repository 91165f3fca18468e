"""Constrained-decoding benchmark: the per-step masking cost of a beam search, in one process.

    python bench/decoding.py                        # 1M and 10M items, 256 beams, CPU
    python bench/decoding.py --sizes 1000000 --device cuda

Catalog: N items whose IDs come from a 3 x 256 residual k-means (ours) trained on a 200k sample
of a clustered data set (a Gaussian mixture, 64-d, 20,000 clusters, wide ones) and encoding all
N; suffixes number the items that share a full code, as the index does. At 1M items 71% of the
items have a full code of their own and the largest group is 67, a collision profile like the
MovieLens demo's (67% and 18 at 9k items, 3 x 32). The ID array is sorted, as
``index.id_arrays()`` returns it.

Measured for every step of an ID (position 0..L: three levels, then the suffix), 256 beams whose
prefixes are those of random catalog items (as live beams are), median of many repetitions:

- ours: ``DecodingTable.allowed`` (the (B, K_max) mask), and the whole
  ``SemanticIdLogitsProcessor`` call on (B, V) scores (V = the ID tokens + 2 specials: a model
  whose vocabulary is the ID tokens, TIGER-style);
- dict trie: a Python dict from prefix tuples to allowed token lists behind transformers'
  ``PrefixConstrainedLogitsProcessor`` (``generate(prefix_allowed_tokens_fn=...)``), which is what
  most reimplementations do;
- dense: a precomputed (all possible prefixes of depth d, V) bool mask, indexed by the packed
  prefix and applied with one ``np.where`` (torch on a GPU): the fastest possible lookup, where
  it fits in ``--dense-budget`` GiB (not at the suffix step: 16.7M prefixes x V).

Also: the table build from the ID arrays, bytes per item, and at 1M items the read of the
arrays from a SQLite index (``index.id_arrays()``) and a full ``table.refresh(index)``.
Targets (issue 12): >= 100x faster than the dict trie, <= 1 ms per step for 256 beams at 1M
items on the CPU, build <= 1 s at 1M, <= 16 bytes per item.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from semid_index.decoding import DecodingTable, SemanticIdLogitsProcessor, TokenLayout  # noqa: E402
from semid_index.storage._codes import group_suffixes  # noqa: E402

SIZES = (256, 256, 256)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def clustered(n: int, dim: int, centres: np.ndarray, seed: int) -> np.ndarray:
    r = np.random.default_rng(seed)
    which = r.integers(0, len(centres), n)
    scale = np.random.default_rng(len(centres)).uniform(0.75, 1.5, len(centres)) \
        .astype(np.float32)
    return centres[which] + r.standard_normal((n, dim), dtype=np.float32) * scale[which, None]


def catalog_ids(n: int, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    """(sorted ids (n, 4), one batch of embeddings for an index, seconds to make them)."""
    from semid_index.quantize import ResidualKMeans

    t0 = time.perf_counter()
    centres = np.random.default_rng(seed).standard_normal((20_000, dim)).astype(np.float32) * 2
    model = ResidualKMeans(3, 256, seed=seed).fit(clustered(200_000, dim, centres, seed + 1))
    chunk = 1_000_000
    codes = np.empty((n, 3), dtype=np.int64)
    for i in range(0, n, chunk):
        m = min(chunk, n - i)
        codes[i:i + m] = model.encode(clustered(m, dim, centres, seed + 2 + i // chunk)).numpy()
    ids = np.c_[codes, group_suffixes(codes)]
    ids = ids[np.lexsort(ids.T[::-1])]
    return ids, clustered(min(n, 1_000_000), dim, centres, seed + 2), time.perf_counter() - t0


def timed(fn, reps: int) -> float:
    """Median seconds of fn() over reps runs (after 3 warm-ups)."""
    for _ in range(3):
        fn()
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return statistics.median(out)


def dict_trie(ids: np.ndarray, layout: TokenLayout) -> dict:
    """prefix tuple (token ids) -> sorted list of allowed next token ids."""
    trie: dict = {}
    tokens = layout.to_tokens(torch.from_numpy(ids)).numpy()
    for depth in range(ids.shape[1]):
        head = tokens[:, :depth + 1]
        new = np.r_[True, (head[1:] != head[:-1]).any(1)]
        for row in head[new].tolist():
            trie.setdefault(tuple(row[:-1]), []).append(row[-1])
    return trie


def dense_masks(table: DecodingTable, ids: np.ndarray, layout: TokenLayout, vocab: int,
                budget: float) -> dict:
    """depth -> (all possible prefixes of that depth, V) bool, where it fits the budget."""
    out = {}
    for d in range(ids.shape[1]):
        n_prefixes = int(np.prod(SIZES[:d])) if d else 1
        if n_prefixes * vocab > budget * 2**30:
            continue
        mask = torch.zeros((n_prefixes, vocab), dtype=torch.bool)
        packed = np.zeros(len(ids), dtype=np.int64)
        for j in range(d):
            packed = packed * SIZES[j] + ids[:, j]
        mask[torch.from_numpy(packed), torch.from_numpy(ids[:, d] + layout.offsets[d])] = True
        out[d] = mask
    return out


def bench_size(n: int, args, rows_out: list) -> None:
    torch.manual_seed(0)
    ids, x, t_make = catalog_ids(n)
    print(f"\n== {n:,} items: IDs from a 3 x 256 model over clustered data ({t_make:.0f} s), "
          f"largest collision group {int(ids[:, -1].max()) + 1}")
    t0 = time.perf_counter()
    table = DecodingTable(ids, sizes=SIZES, device=args.device)
    t_build = time.perf_counter() - t0
    layout = TokenLayout.contiguous(table, start=2, eos_id=1)
    vocab = 2 + sum(layout.widths)
    print(f"table build from the ID arrays: {t_build:.2f} s; {table.nbytes / 2**20:.1f} MiB = "
          f"{table.bytes_per_item:.2f} bytes per item; node counts {table.node_counts}")
    rng = np.random.default_rng(1)
    beams = args.beams
    prompt = 4
    trie = None
    if not args.no_trie:
        t0 = time.perf_counter()
        trie = dict_trie(ids, layout)
        print(f"dict trie: {len(trie):,} prefixes built in {time.perf_counter() - t0:.1f} s "
              f"(peak RSS so far {peak_rss_gib():.1f} GiB)")
    dense = dense_masks(table, ids, layout, vocab, args.dense_budget)
    from transformers import PrefixConstrainedLogitsProcessor

    for depth in range(4):
        pick = ids[rng.integers(0, n, beams)]
        gen = layout.to_tokens(torch.from_numpy(pick[:, :depth]))
        input_ids = torch.cat([torch.full((beams, prompt), 3), gen], 1).to(args.device)
        scores = torch.randn(beams, vocab, device=args.device)
        codes = torch.from_numpy(pick[:, :depth]).to(args.device)
        proc = SemanticIdLogitsProcessor(table, layout, prompt_length=prompt, num_beams=beams)

        def sync(v):
            if args.device != "cpu":
                torch.cuda.synchronize()
            return v

        t_allowed = timed(lambda: sync(table.allowed(codes)), args.reps)
        t_proc = timed(lambda: sync(proc(input_ids, scores)), args.reps)
        out = proc(input_ids, scores)
        assert torch.isfinite(out).any(1).all() and proc.n_forced_end == 0
        t_trie = t_dense = float("nan")
        if trie is not None:
            def fn(batch_id, sent, trie=trie):
                return trie.get(tuple(sent[prompt:].tolist()), [layout.eos_id])
            hf = PrefixConstrainedLogitsProcessor(fn, num_beams=beams)
            cpu_ids, cpu_scores = input_ids.cpu(), scores.cpu()
            t_trie = timed(lambda: hf(cpu_ids, cpu_scores), max(5, args.reps // 20))
            same = torch.isfinite(hf(cpu_ids, cpu_scores)) == torch.isfinite(out.cpu())
            assert bool(same.all()), "the dict trie and the table disagree"
        if depth in dense:  # numpy on CPU (its fastest form there), torch on a GPU
            packed = np.zeros(beams, dtype=np.int64)
            for j in range(depth):
                packed = packed * SIZES[j] + pick[:, j]
            if args.device == "cpu":
                mask_np, sc = dense[depth].numpy(), scores.numpy()

                def dense_step():
                    return torch.from_numpy(np.where(mask_np[packed], sc, -np.inf))
            else:
                mask, packed_t = dense[depth].to(args.device), torch.from_numpy(packed).cuda()

                def dense_step():
                    return sync(scores.masked_fill(~mask[packed_t], float("-inf")))
            t_dense = timed(dense_step, args.reps)
        rows_out.append((n, depth, t_allowed, t_proc, t_trie, t_dense))
        print(f"  step {depth} ({'suffix' if depth == 3 else f'level {depth + 1}'}): allowed "
              f"{t_allowed * 1e6:7.0f} us, processor {t_proc * 1e6:7.0f} us, dict trie "
              f"{t_trie * 1e6:8.0f} us, dense {t_dense * 1e6:6.0f} us")
    if n <= 1_000_000 and not args.no_index:
        index_read(ids, x, table, args)
    del trie, dense


def index_read(ids, x, table, args) -> None:
    """Store the same IDs in a SQLite index (the load is not timed) and time the read back."""
    from semid_index import SemanticIdIndex
    from semid_index.quantize import ResidualKMeans

    with tempfile.TemporaryDirectory() as tmp:
        idx = SemanticIdIndex.create(f"sqlite:///{os.path.join(tmp, 'i.db')}", "bench",
                                     n_levels=3, codebook_size=256)
        model = ResidualKMeans(3, 256, seed=0).fit(x[:50_000])
        keys = [f"item{i}" for i in range(len(x))]
        t0 = time.perf_counter()
        idx.fit(keys, x, model=model, progress=False)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        k, arr = idx.id_arrays()
        t_read = time.perf_counter() - t0
        t0 = time.perf_counter()
        table = DecodingTable.from_index(idx, device=args.device)
        t_from = time.perf_counter() - t0
        t0 = time.perf_counter()
        table.refresh(idx)
        t_refresh = time.perf_counter() - t0
        idx.close()
    print(f"  SQLite index of {len(arr):,} items (stored in {t_fit:.0f} s, not part of the "
          f"figures): index.id_arrays() {t_read:.2f} s; DecodingTable.from_index "
          f"{t_from:.2f} s; table.refresh(index) {t_refresh:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="1000000,10000000")
    ap.add_argument("--beams", type=int, default=256)
    ap.add_argument("--reps", type=int, default=200)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dense-budget", type=float, default=4.0, help="GiB per dense mask")
    ap.add_argument("--no-trie", action="store_true", help="skip the dict trie (memory)")
    ap.add_argument("--no-index", action="store_true", help="skip the SQLite read at <= 1M")
    args = ap.parse_args()
    if args.device == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}, "
          f"{args.beams} beams")
    rows: list = []
    for n in map(int, args.sizes.split(",")):
        bench_size(n, args, rows)
    print(f"\n| items | step | ours allowed() | ours processor | dict trie (HF) | dense | "
          f"trie / processor | processor / dense |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for n, depth, a, p, t, d in rows:
        name = "suffix" if depth == 3 else f"level {depth + 1}"
        print(f"| {n:,} | {name} | {a * 1e6:.0f} us | {p * 1e6:.0f} us | "
              f"{'-' if t != t else f'{t * 1e6:,.0f} us'} | "
              f"{'-' if d != d else f'{d * 1e6:.0f} us'} | "
              f"{'-' if t != t else f'{t / p:.0f}x'} | {'-' if d != d else f'{p / d:.1f}x'} |")
    print(f"peak RSS {peak_rss_gib():.1f} GiB")


if __name__ == "__main__":
    main()
