"""The ``semid`` command: build, query and export a semantic-ID index from the shell.

Every command takes ``--db URL`` (default ``$SEMID_DB``, else ``sqlite:///semid.db``: a SQLite
file in the current directory), ``--index NAME`` (default ``$SEMID_INDEX``, else ``default``)
and ``--json`` (machine-readable output). Errors print one line to stderr and exit with
status 1 (2 for a usage error); nothing is half-written.
"""

from __future__ import annotations

import re
import sys
import time

import click

from . import _cli_io as io
from .errors import SemanticIdError

DEFAULT_DB = "sqlite:///semid.db"
_CTX = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


class _Group(click.Group):
    """Turns the library's errors (database and file errors included: the library wraps them)
    into one line and exit status 1."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SemanticIdError as e:
            _fail(str(e.args[0]) if e.args else type(e).__name__)


def _fail(message: str, status: int = 1):
    click.echo(f"semid: error: {message}", err=True)
    sys.exit(status)


def _common(f):
    """--db, --index and --json on every command (they may follow the command name)."""
    f = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")(f)
    f = click.option("--index", "-i", "index_name", envvar="SEMID_INDEX", default="default",
                     show_default=True, help="Index name [env: SEMID_INDEX].")(f)
    f = click.option("--db", envvar="SEMID_DB", default=DEFAULT_DB, show_default=True,
                     help="Database URL: sqlite:///file.db or postgresql+psycopg://... "
                          "[env: SEMID_DB].")(f)
    return f


def _inputs(f):
    """Options that say where item keys and embeddings come from."""
    f = click.option("--row-numbers", is_flag=True,
                     help="Use row numbers 0..N-1 as item keys.")(f)
    f = click.option("--column", help="Embeddings: the .npz array or Parquet list column "
                                      "(default: embeddings / embedding).")(f)
    f = click.option("--key-column", help="Parquet column holding the item keys (default: key).")(f)
    f = click.option("--keys", "keys_file", type=click.Path(dir_okay=False),
                     help="Text file of item keys, one per line, in row order.")(f)
    return f


def _open(db: str, name: str):
    from .index import SemanticIdIndex

    return SemanticIdIndex.open(db, name)


def _progress() -> bool:
    return sys.stderr.isatty()


def _emit(as_json: bool, data, text: str) -> None:
    """``data`` as JSON with ``--json``, else ``text`` for a person."""
    if as_json:
        io.emit_json(data)
    else:
        click.echo(text)


def _n(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


@click.group(cls=_Group, context_settings=_CTX)
@click.version_option(package_name="semid-index", prog_name="semid")
def main():
    """Hierarchical semantic IDs for item embeddings, kept in SQLite or PostgreSQL.

    \b
    semid fit movies.parquet --key-column title     # train, assign IDs, store them
    semid similar "Toy Story (1995)"                # items sharing the longest prefix
    semid export ids.jsonl                          # IDs and token strings for training
    """


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
        out = {"index": idx.name, "db": idx.url, "levels": idx.n_levels,
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
def fit(db, index_name, as_json, embeddings, keys_file, key_column, column, row_numbers, levels,
        codebook_size, seed):
    """Train codebooks on EMBEDDINGS and give every item an ID (a new active version).

    EMBEDDINGS is a .npy (memory-mapped), .npz or .parquet file; the index is created first
    if it does not exist. One transaction: on any error the database is as before.

    \b
    semid fit vectors.npy --keys items.txt -L 3 -k 256
    semid fit movies.parquet --key-column title --column embedding
    """
    from .errors import IndexNotFoundError
    from .index import SemanticIdIndex

    keys, x = io.read_embeddings(embeddings, keys_file=keys_file, key_column=key_column,
                                 column=column, row_numbers=row_numbers)
    t = time.perf_counter()
    ctx = click.get_current_context()
    shape_given = any(ctx.get_parameter_source(p) != click.core.ParameterSource.DEFAULT
                      for p in ("levels", "codebook_size"))
    idx = None
    if not shape_given:  # an existing index keeps its shape
        try:
            idx = SemanticIdIndex.open(db, index_name)
        except IndexNotFoundError:
            pass
    if idx is None:  # create it, or check that the existing one has the shape asked for
        idx = SemanticIdIndex.create(db, index_name, n_levels=levels,
                                     codebook_size=_sizes(codebook_size, levels),
                                     exist_ok=True, seed=seed)
    with idx:
        idx.fit(keys, x, progress=_progress())
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
def add(db, index_name, as_json, embeddings, keys_file, key_column, column, row_numbers,
        on_conflict):
    """Give new items IDs with the frozen codebooks (no retraining; issued IDs never change).

    \b
    semid add new_items.npy --keys new_items.txt
    semid add today.parquet --key-column sku --on-conflict reassign
    """
    keys, x = io.read_embeddings(embeddings, keys_file=keys_file, key_column=key_column,
                                 column=column, row_numbers=row_numbers)
    with _open(db, index_name) as idx:
        ids = idx.add(keys, x, on_conflict=on_conflict, progress=_progress())
        version = idx.active_version
    if as_json:
        io.emit_json({"version": version, "added": len(ids),
                      "ids": {k: str(i) for k, i in zip(keys, ids)}})
        return
    click.echo(f"{_n(len(ids), 'item')} assigned IDs in version {version}")
    if len(ids) <= 20:
        click.echo(io.table(["key", "id"], [[k, str(i)] for k, i in zip(keys, ids)]))


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


# ============================================================================ reading
@main.command(context_settings=_CTX)
@_common
@click.argument("keys", nargs=-1, required=True)
def lookup(db, index_name, as_json, keys):
    """Print the semantic IDs of items.

    \b
    semid lookup "Toy Story (1995)" "Heat (1995)"
    """
    with _open(db, index_name) as idx:
        ids = idx.lookup_many(list(keys))
    rows = [[k, str(i), i.tokens()] for k, i in zip(keys, ids)]
    _emit(as_json, [dict(zip(("key", "id", "tokens"), r)) for r in rows],
          io.table(["key", "id", "tokens"], rows))


@main.command(context_settings=_CTX)
@_common
@click.argument("key")
@click.option("--limit", "-n", type=click.IntRange(1), default=10, show_default=True)
@click.option("--min-shared", type=click.IntRange(1), default=1, show_default=True,
              help="Only items sharing at least this many leading levels.")
def similar(db, index_name, as_json, key, limit, min_shared):
    """Items sharing the longest ID prefix with KEY, deepest first.

    \b
    semid similar "Toy Story (1995)" --limit 5
    """
    with _open(db, index_name) as idx:
        me = idx.lookup(key)
        hits = idx.similar(key, limit=limit, min_shared=min_shared)
    _emit(as_json, {"key": key, "id": str(me), "similar": [
        {"key": h.key, "id": str(h.id), "shared_levels": h.shared_levels} for h in hits]},
        f"{key}  {me}\n" + io.table(["shared", "key", "id"],
                                    [[h.shared_levels, h.key, str(h.id)] for h in hits],
                                    right={0}))


@main.command(context_settings=_CTX)
@_common
@click.argument("prefix")
@click.option("--limit", "-n", type=click.IntRange(1), default=20, show_default=True)
@click.option("--cursor", help="The cursor printed by the previous page.")
@click.option("--count", "count_only", is_flag=True,
              help="Print the number of items and of each next code instead of items.")
def prefix(db, index_name, as_json, prefix, limit, cursor, count_only):
    """Items whose ID starts with PREFIX ("12" or "12-201"), ordered by ID, one page at a time.

    \b
    semid prefix 12-201
    semid prefix 12-201 --cursor 12-201-7-0
    semid prefix 12 --count
    """
    with _open(db, index_name) as idx:
        if count_only:
            n = idx.count(prefix)
            children = idx.child_counts(prefix) if len(prefix.split("-")) < idx.n_levels \
                else {}
            if as_json:
                io.emit_json({"prefix": prefix, "items": n,
                              "next_codes": {str(c): k for c, k in children.items()}})
            else:
                click.echo(f"{prefix}: {n:,} items")
                if children:
                    click.echo(io.table(["next code", "items"],
                                        [[c, k] for c, k in children.items()], right={0, 1}))
            return
        page = idx.items_with_prefix(prefix, limit=limit, cursor=cursor)
    _emit(as_json, {"items": [{"key": it.key, "id": str(it.id)} for it in page],
                    "cursor": page.cursor},
          io.table(["id", "key"], [[str(it.id), it.key] for it in page])
          + (f"\nnext page: --cursor {page.cursor}" if page.cursor else ""))


@main.command(context_settings=_CTX)
@_common
@click.option("--embeddings", type=click.Path(dir_okay=False),
              help="Also report the reconstruction error of these embeddings (.npy/.npz/.parquet).")
@click.option("--column", help="The .npz array or Parquet column of --embeddings.")
@click.option("--version", "version", type=int, help="A version other than the active one.")
def stats(db, index_name, as_json, embeddings, column, version):
    """The quality report: per-level utilisation, dead codes, entropy and perplexity, collided
    and suffixed shares, largest group, unique share at each depth (and the relative
    reconstruction error with --embeddings).

    \b
    semid stats
    semid stats --embeddings vectors.npy
    """
    with _open(db, index_name) as idx:
        s = idx.stats(version=version)
        if s.n_items == 0:
            _fail(f"index {s.name!r} has no items yet: run semid fit first")
        x = None if not embeddings else \
            io.read_embeddings(embeddings, column=column, row_numbers=True)[1]
        cs = idx.code_report(x, version=version)
    rel = cs["relative_error"]
    out = {"index": s.name, "db": s.url, "version": s.version, "n_versions": s.n_versions,
           "n_items": s.n_items, "dim": s.dim, "codebook_sizes": list(s.codebook_sizes),
           "n_retired": s.n_retired, "n_distinct_codes": s.n_distinct_codes,
           "n_collided": s.n_collided, "collided_share": s.collided_share,
           "n_suffixed": s.n_suffixed, "suffixed_share": s.suffixed_share,
           "largest_group": s.largest_group, "max_suffix": s.max_suffix,
           "unique_share": cs["unique_share"], "levels": [vars(lv) for lv in cs["levels"]],
           "relative_error": rel}
    if as_json:
        io.emit_json(out)
        return
    click.echo(f"index {s.name!r} in {s.url}: version {s.version} of {s.n_versions}, "
               f"{s.n_items:,} items, D={s.dim}, {s.n_retired:,} retired IDs")
    click.echo(io.table(
        ["level", "K", "used", "dead", "util", "entropy bits", "perplexity", "top share",
         "unique share"],
        [[lv.level, lv.codebook_size, lv.used, lv.dead, f"{lv.utilisation:.1%}",
          f"{lv.entropy_bits:.2f}", f"{lv.perplexity:.1f}", f"{lv.largest_share:.2%}",
          f"{share:.2%}"] for lv, share in zip(cs["levels"], cs["unique_share"])],
        right=set(range(9))))
    click.echo(f"distinct full codes {s.n_distinct_codes:,}; collided (sharing all "
               f"{s.n_levels} codes with another item) {s.n_collided:,} = {s.collided_share:.2%};"
               f" suffixed (suffix > 0) {s.suffixed_share:.2%}; largest group {s.largest_group}")
    if rel is not None:
        click.echo(f"relative error ||x - x_hat||^2 / ||x||^2: {rel:.4f}")


@main.command(context_settings=_CTX)
@_common
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--what", type=click.Choice(["ids", "next-codes", "grid"]), default="ids",
              show_default=True,
              help="ids: one record per item; next-codes: the valid next codes after every "
                   "prefix (constrained decoding); grid: GRID's (L+1) x N array (.npy).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "npz"]),
              help="Default: from OUT's extension.")
@click.option("--no-tokens", is_flag=True, help="Leave the token strings out of an ids export.")
@click.option("--version", "version", type=int, help="A version other than the active one.")
def export(db, index_name, as_json, out, what, fmt, no_tokens, version):
    """Write the index's IDs for training or serving a generative model.

    \b
    semid export ids.jsonl                          # key, id, codes, suffix, <a_12><b_201>...
    semid export ids.parquet --no-tokens
    semid export next.jsonl --what next-codes       # prefix -> allowed next codes
    semid export grid.npy --what grid               # (L+1, N) int64 + grid.npy.keys.txt
    """
    from . import export as ex

    if what == "grid":
        if fmt is not None or not out.endswith(".npy"):
            _fail("--what grid writes a NumPy .npy file: name OUT something.npy")
    else:
        allowed = ex.FORMATS if what == "ids" else ("jsonl", "parquet", "npz")
        fmt = ex.format_of(out, fmt, allowed)
    # files appear only complete: an export that fails leaves what was there before
    n, extra = _export(db, index_name, out, what, fmt, no_tokens, version)
    _emit(as_json, {"out": out, "what": what, "rows": n}, f"wrote {n:,}{extra} to {out}")


def _export(db, index_name, out, what, fmt, no_tokens, version) -> tuple[int, str]:
    from . import export as ex

    with _open(db, index_name) as idx:
        if what == "ids":
            n, extra = ex.write_ids(out, fmt, idx.id_pages(version=version),
                                    tokens=not no_tokens), " items"
        elif what == "next-codes":
            n, extra = ex.write_next_codes(out, fmt, idx.id_arrays(version=version)[1]), \
                " prefixes"
        else:
            n = idx.count(version=version)
            keys_file = ex.write_grid(out, idx.id_pages(version=version), n, idx.n_levels)
            extra = f" items (+ {keys_file})"
    return n, extra


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


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="semid")
