"""The ``semid`` command: build, query and export a semantic-ID index from the shell.

Every command takes ``--db URL`` (default ``$SEMID_DB``, else ``sqlite:///semid.db``: a SQLite
file in the current directory), ``--index NAME`` (default ``$SEMID_INDEX``, else ``default``)
and ``--json`` (machine-readable output). Errors print one line to stderr and exit with
status 1 (2 for a usage error); nothing is half-written.

This module holds the group's writing, version and schema commands; the reading and export
commands are in :mod:`semid_index._cli_read`, the shared pieces in :mod:`semid_index._cli_common`.
"""

from __future__ import annotations

import re
import sys
import time
from typing import Any

import click

from . import _cli_io as io
from ._cli_common import _CTX, _common, _emit, _fail, _inputs, _n, _open, _progress, main
from .errors import SemanticIdError

__all__ = ["main"]


# ============================================================================ writing
@main.command(context_settings=_CTX)
@_common
@click.option("--levels", "-L", type=click.IntRange(1, 16), default=3, show_default=True,
              help="Levels of the hierarchy.")
@click.option("--codebook-size", "-k", default="256", show_default=True,
              help="Codes per level: one number, or one per level (256,256,512).")
@click.option("--seed", type=int, default=0, show_default=True, help="Training seed.")
@click.option("--normalize-residuals", is_flag=True, help="GRID-style unit-normalised residuals.")
@click.option("--exist-ok", is_flag=True, help="Succeed if the index already exists.")
def init(db, index_name, as_json, levels, codebook_size, seed, normalize_residuals, exist_ok):
    """Create an empty index.

    \b
    semid init --levels 3 --codebook-size 256
    semid --help                                    # then: semid fit, semid add, ...
    """
    from .index import SemanticIdIndex

    sizes = _sizes(codebook_size, levels)
    opts = {"seed": seed}
    if normalize_residuals:
        opts["normalize_residuals"] = True
    with SemanticIdIndex.create(db, index_name, n_levels=levels, codebook_size=sizes,
                                exist_ok=exist_ok, **opts) as idx:
        out: dict[str, Any] = {"index": idx.name, "db": idx.url, "levels": idx.n_levels,
                               "codebook_sizes": list(idx.codebook_sizes)}
    _emit(as_json, out, f"index {out['index']!r} in {out['db']}: {levels} levels of "
                        f"{'/'.join(map(str, out['codebook_sizes']))} codes")


def _sizes(text: str, levels: int):
    """--codebook-size as one int or a list of ints (the library checks the values)."""
    if not re.fullmatch(r"[0-9]{1,10}(,[0-9]{1,10})*", str(text).strip()):
        _fail(f"--codebook-size must be a number or numbers joined by commas, got {text!r}")
    sizes = [int(s) for s in str(text).split(",")]
    if len(sizes) == 1:
        return sizes[0]
    if len(sizes) != levels:
        _fail(f"--codebook-size lists {len(sizes)} sizes for {levels} levels")
    return sizes


@main.command(context_settings=_CTX)
@_common
@click.argument("embeddings", type=click.Path(dir_okay=False))
@_inputs
@click.option("--levels", "-L", type=click.IntRange(1, 16), default=3, show_default=True,
              help="Levels, if the index is created here (else checked against it).")
@click.option("--codebook-size", "-k", default="256", show_default=True,
              help="Codes per level, if the index is created here (else checked against it).")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Training seed, if the index is created here.")
@click.option("--balance", type=click.FloatRange(0, None), default=None,
              help="Balanced codes with this slack (e.g. 0.1), if the index is created here.")
@click.option("--max-per-code", type=click.IntRange(1, 2**31 - 2), default=None,
              help="At most this many items per full code, if the index is created here: "
                   "training leaves every prefix room, and overflow is relocated under the "
                   "same prefix.")
@click.option("--warm-start", is_flag=True,
              help="Start from the active version's codebooks (keeps most prefixes).")
@click.option("--distributed", is_flag=True,
              help="Run as one rank of a torchrun job: each rank trains on its contiguous part "
                   "of the file (data-parallel), encodes it, and rank 0 stores the version.")
def fit(db, index_name, as_json, embeddings, keys_file, key_column, column, row_numbers, levels,
        codebook_size, seed, balance, max_per_code, warm_start, distributed):
    """Train codebooks on EMBEDDINGS and give every item an ID (a new active version).

    EMBEDDINGS is a .npy (memory-mapped), .npz or .parquet file; the index is created first
    if it does not exist. One transaction: on any error the database is as before.

    \b
    semid fit vectors.npy --keys items.txt -L 3 -k 256
    semid fit vectors.npy --keys items.txt -k 32 --max-per-code 1
    semid fit movies.parquet --key-column title --column embedding
    semid fit grown.npy --keys items.txt --warm-start
    torchrun --nproc-per-node 4 -m semid_index fit vectors.npy --keys items.txt --distributed
    """
    from .errors import IndexNotFoundError
    from .index import SemanticIdIndex

    keys, x = io.read_embeddings(embeddings, keys_file=keys_file, key_column=key_column,
                                 column=column, row_numbers=row_numbers)
    t = time.perf_counter()
    ctx = click.get_current_context()
    shape_given = any(ctx.get_parameter_source(p) != click.core.ParameterSource.DEFAULT
                      for p in ("levels", "codebook_size"))

    def open_index():
        idx = None
        if not shape_given:  # an existing index keeps its shape
            try:
                idx = SemanticIdIndex.open(db, index_name)
            except IndexNotFoundError:
                pass
        if idx is None:  # create it, or check that the existing one has the shape asked for
            idx = SemanticIdIndex.create(db, index_name, n_levels=levels,
                                         codebook_size=_sizes(codebook_size, levels),
                                         exist_ok=True, seed=seed,
                                         **({} if balance is None else {"balance": balance}),
                                         **({} if max_per_code is None else
                                            {"max_per_code": max_per_code}))
        return idx

    if distributed:
        from ._fit_dist import rank_first, torchrun_job

        with torchrun_job() as (rank, world):
            keys, x = _part(keys, x, rank, world)
            with rank_first(rank):
                idx = open_index()
            with idx:
                idx.fit(keys, x, warm_start=warm_start, progress=_progress() and rank == 0,
                        distributed=True)
                s = idx.stats()
        if rank:
            return
    else:
        with open_index() as idx:
            idx.fit(keys, x, warm_start=warm_start, progress=_progress())
            s = idx.stats()
    out = {"index": s.name, "version": s.version, "n_items": s.n_items, "dim": s.dim,
           "codebook_sizes": list(s.codebook_sizes), "collided_share": s.collided_share,
           "suffixed_share": s.suffixed_share, "seconds": round(time.perf_counter() - t, 3)}
    _emit(as_json, out, f"fitted version {s.version} of {s.name!r}: {s.n_items:,} items, "
                        f"D={s.dim}, {'/'.join(map(str, s.codebook_sizes))} codes; "
                        f"{s.collided_share:.2%} share their full code with another item "
                        f"({out['seconds']:.1f} s)")


@main.command(context_settings=_CTX)
@_common
@click.argument("embeddings", type=click.Path(dir_okay=False))
@_inputs
@click.option("--on-conflict", type=click.Choice(["error", "keep", "reassign"]), default="error",
              show_default=True, help="A key already indexed with another embedding.")
@click.option("--shard", metavar="I/N",
              help="Add only part I (0-based) of N equal contiguous parts of the file: N "
                   "workers, each with its own I, fill one index together (PostgreSQL).")
@click.option("--batch", type=click.IntRange(min=1), metavar="ROWS",
              help="Commit every ROWS items, so other writers get the index's lock between "
                   "batches (default: one transaction for all). After a failure the committed "
                   "batches stay; the same command again adds the rest.")
def add(db, index_name, as_json, embeddings, keys_file, key_column, column, row_numbers,
        on_conflict, shard, batch):
    """Give new items IDs with the frozen codebooks (no retraining; issued IDs never change).

    \b
    semid add new_items.npy --keys new_items.txt
    semid add today.parquet --key-column sku --on-conflict reassign
    semid add catalog.npy --keys catalog.txt --shard 2/4 --batch 100000   # worker 2 of 4
    """
    keys, x = io.read_embeddings(embeddings, keys_file=keys_file, key_column=key_column,
                                 column=column, row_numbers=row_numbers)
    if shard is not None:
        keys, x = _part(keys, x, *_shard(shard))
    step = batch or max(len(keys), 1)
    ids: list = []
    with _open(db, index_name) as idx:
        for a in range(0, max(len(keys), 1), step):
            try:
                ids += idx.add(keys[a:a + step], x[a:a + step], on_conflict=on_conflict,
                               progress=_progress())
            except SemanticIdError as e:
                if a:  # earlier batches are committed: say so, and how to resume
                    _fail(f"{e} (after {a:,} items of this run were committed; running the "
                          "same command again keeps them and adds the rest)")
                raise
        version = idx.active_version
    if as_json:
        io.emit_json({"version": version, "added": len(ids),
                      "ids": {k: str(i) for k, i in zip(keys, ids)}})
        return
    click.echo(f"{_n(len(ids), 'item')} assigned IDs in version {version}")
    if len(ids) <= 20:
        click.echo(io.table(["key", "id"], [[k, str(i)] for k, i in zip(keys, ids)]))


def _part(keys, x, i: int, n: int):
    """Part i (0-based) of n equal contiguous parts of the keys and rows."""
    if len(keys) != x.shape[0]:
        _fail(f"{len(keys):,} keys for {x.shape[0]:,} embedding rows")
    lo, hi = x.shape[0] * i // n, x.shape[0] * (i + 1) // n
    return keys[lo:hi], x[lo:hi]


def _shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> (I, N) with 0 <= I < N."""
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    i, n = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if not 0 <= i < n:
        _fail(f"--shard takes I/N with 0 <= I < N (e.g. 0/4), got {text!r}")
    return i, n


@main.command(context_settings=_CTX)
@_common
@click.argument("keys", nargs=-1)
@click.option("--keys", "keys_file", type=click.Path(dir_okay=False),
              help="Text file of item keys, one per line.")
@click.option("--missing", type=click.Choice(["raise", "skip"]), default="raise",
              show_default=True, help="Unknown keys: fail (removing nothing) or skip them.")
def remove(db, index_name, as_json, keys, keys_file, missing):
    """Remove items; their IDs are retired and never issued again.

    \b
    semid remove sku-1 sku-2
    semid remove --keys discontinued.txt --missing skip
    """
    keys = list(keys) + (io.read_keys(keys_file) if keys_file else [])
    if not keys:
        _fail("name the items to remove: KEY... or --keys FILE")
    with _open(db, index_name) as idx:
        n = idx.remove(keys, missing=missing)
    _emit(as_json, {"removed": n}, f"{_n(n, 'item')} removed")

# ============================================================================ versions & schema
@main.command(context_settings=_CTX)
@_common
def versions(db, index_name, as_json):
    """List the codebook versions of the index (the active one is marked).

    \b
    semid versions
    """
    with _open(db, index_name) as idx:
        vs = idx.versions()
    _emit(as_json, [{"version": v.version, "created_at": v.created_at.isoformat(),
                     "items_at_fit": v.n_items_at_fit, "active": v.active, "dim": v.dim}
                    for v in vs],
          io.table(["version", "created", "items at fit", "dim", "active"],
                   [[v.version, v.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                     f"{v.n_items_at_fit:,}", v.dim, "*" if v.active else ""] for v in vs],
                   right={0, 2, 3}))


@main.command(context_settings=_CTX)
@_common
@click.argument("version", type=int)
def activate(db, index_name, as_json, version):
    """Make VERSION the active one (lookups, prefixes and adds use it).

    \b
    semid activate 1
    """
    with _open(db, index_name) as idx:
        idx.activate(version)
    _emit(as_json, {"active_version": version}, f"version {version} is active")


@main.command(name="list", context_settings=_CTX)
@_common
def list_(db, index_name, as_json):
    """List the indexes in the database.

    \b
    semid list --db postgresql+psycopg://user@host/db
    """
    from .index import SemanticIdIndex

    names = SemanticIdIndex.list_indexes(db)
    _emit(as_json, names, "\n".join(names) if names else "(no indexes)")


@main.command(context_settings=_CTX)
@_common
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
def drop(db, index_name, as_json, yes):
    """Delete the index: its versions, codebooks and IDs (other indexes stay).

    \b
    semid drop --index old_catalog --yes
    """
    from .index import SemanticIdIndex

    if not yes:
        if not sys.stdin.isatty():
            _fail(f"dropping index {index_name!r} deletes all its IDs: pass --yes to confirm")
        click.confirm(f"delete index {index_name!r} and all its IDs?", abort=True)
    SemanticIdIndex.drop(db, index_name)
    _emit(as_json, {"dropped": index_name}, f"index {index_name!r} dropped")


@main.command(context_settings=_CTX)
@_common
def migrate(db, index_name, as_json):
    """Bring the database's schema to this version of semid_index (one transaction).

    \b
    semid migrate --db sqlite:///old.db
    """
    from .index import SemanticIdIndex

    before, after = SemanticIdIndex.migrate(db)
    _emit(as_json, {"before": before, "after": after},
          f"schema already at revision {after}" if before == after else
          f"schema upgraded from revision {before or '(none)'} to {after}")


from . import _cli_read  # noqa: E402,F401 - registers the reading and export commands

if __name__ == "__main__":  # pragma: no cover
    main(prog_name="semid")
