"""The reading and export commands of ``semid``: lookup, similar, prefix, stats, export.

None of them imports torch (``stats --embeddings`` does, to encode the embeddings).
"""

from __future__ import annotations

import click

from . import _cli_io as io
from ._cli_common import _CTX, _common, _emit, _fail, _open, main


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
@click.option("--keys", "keys_file", type=click.Path(dir_okay=False),
              help="Item keys of the --embeddings rows, one per line: report on their stored IDs "
                   "(reconstruction error against the fit's: drift; neighbour preservation).")
@click.option("--version", "version", type=int, help="A version other than the active one.")
def stats(db, index_name, as_json, embeddings, column, keys_file, version):
    """The quality report: per-level utilisation, dead codes, entropy and perplexity, collided
    and suffixed shares, largest group, unique share at each depth (and the relative
    reconstruction error with --embeddings).

    \b
    semid stats
    semid stats --embeddings vectors.npy
    semid stats --embeddings added.npy --keys added.txt
    """
    with _open(db, index_name) as idx:
        s = idx.stats(version=version)
        if s.n_items == 0:
            _fail(f"index {s.name!r} has no items yet: run semid fit first")
        keys = x = None
        if keys_file and not embeddings:
            _fail("--keys needs --embeddings (one row per key)")
        if embeddings and keys_file:
            keys, x = io.read_embeddings(embeddings, keys_file=keys_file, column=column)
        elif embeddings:
            x = io.read_embeddings(embeddings, column=column, row_numbers=True)[1]
        cs = idx.code_report(x, keys=keys, version=version)
    rel = cs["relative_error"]
    out = {"index": s.name, "db": s.url, "version": s.version, "n_versions": s.n_versions,
           "n_items": s.n_items, "dim": s.dim, "codebook_sizes": list(s.codebook_sizes),
           "n_retired": s.n_retired, "n_distinct_codes": s.n_distinct_codes,
           "n_collided": s.n_collided, "collided_share": s.collided_share,
           "n_suffixed": s.n_suffixed, "suffixed_share": s.suffixed_share,
           "largest_group": s.largest_group, "max_suffix": s.max_suffix,
           "unique_share": cs["unique_share"], "levels": [vars(lv) for lv in cs["levels"]],
           "relative_error": rel, "fit": cs.get("fit") or {},
           "neighbour_preservation": cs.get("neighbour_preservation"),
           "code_size_shift": cs.get("code_size_shift")}
    if as_json:
        io.emit_json(out)
        return
    click.echo(f"index {s.name!r} in {s.url}: version {s.version} of {s.n_versions}, "
               f"{s.n_items:,} items, D={s.dim}, {s.n_retired:,} retired IDs")
    click.echo(io.table(
        ["level", "K", "used", "dead", "util", "entropy bits", "perplexity", "gini",
         "sizes min..max", "top share", "unique share"],
        [[lv.level, lv.codebook_size, lv.used, lv.dead, f"{lv.utilisation:.1%}",
          f"{lv.entropy_bits:.2f}", f"{lv.perplexity:.1f}", f"{lv.gini:.3f}",
          f"{lv.size_min}..{lv.size_max}", f"{lv.largest_share:.2%}",
          f"{share:.2%}"] for lv, share in zip(cs["levels"], cs["unique_share"])],
        right=set(range(11))))
    click.echo(f"distinct full codes {s.n_distinct_codes:,}; collided (sharing all "
               f"{s.n_levels} codes with another item) {s.n_collided:,} = {s.collided_share:.2%};"
               f" suffixed (suffix > 0) {s.suffixed_share:.2%}; largest group {s.largest_group}")
    fit = cs.get("fit") or {}
    if "n_relocated" in fit:
        click.echo(f"at fit: {fit['n_relocated']:,} items relocated under max_per_code (extra "
                   f"squared error {fit['relocation_error']:.4g}), {fit['n_over_capacity']:,} "
                   "left over capacity")
    if "relative_error" in fit:
        click.echo(f"relative error at fit: {fit['relative_error']:.4f}")
    if rel is not None:
        click.echo(f"relative error ||x - x_hat||^2 / ||x||^2: {rel:.4f}"
                   + (f" (of the {len(keys):,} given items, under their stored IDs)" if keys
                      else ""))
    if cs.get("neighbour_preservation") is not None:
        click.echo("neighbour preservation (share of 10 nearest neighbours sharing the first k "
                   "codes): " + ", ".join(f"@{k + 1} {v:.3f}" for k, v in
                                         enumerate(cs["neighbour_preservation"])))
    if cs.get("code_size_shift") is not None:
        click.echo("code-size shift against the whole version (total variation): " +
                   ", ".join(f"level {k + 1} {v:.3f}" for k, v in
                             enumerate(cs["code_size_shift"])))


@main.command(name="compare-versions", context_settings=_CTX)
@_common
@click.argument("old_version", type=int)
@click.argument("new_version", type=int, required=False)
def compare_versions(db, index_name, as_json, old_version, new_version):
    """Churn between two versions (NEW default: the active one): the share of the items in both
    whose first k codes changed, k = 1..L. A warm-started refit keeps it low.

    \b
    semid compare-versions 1
    semid compare-versions 1 2 --json
    """
    with _open(db, index_name) as idx:
        c = idx.churn(old_version, new_version)
    _emit(as_json, c, "\n".join(
        [f"version {c['old_version']} -> {c['new_version']}: {c['n_common']:,} items in both, "
         f"{c['n_only_old']:,} only in {c['old_version']}, {c['n_only_new']:,} only in "
         f"{c['new_version']}",
         io.table(["first k codes", "changed"],
                  [[k + 1, f"{v:.2%}"] for k, v in enumerate(c["churn"])], right={0, 1})]))


@main.command(context_settings=_CTX)
@_common
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--what", type=click.Choice(["ids", "next-codes", "grid", "decoding", "sid2items",
                                          "prefix-ngrams"]), default="ids", show_default=True,
              help="ids: one record per item; next-codes: the valid next codes after every "
                   "prefix, for constrained decoding; grid: GRID's (L+1) x N array (.npy); "
                   "decoding: the sorted (N, L+1) code array (.npy) for dense+CSR builders; "
                   "sid2items: packed SID -> items (.json, the OneRec serving layout); "
                   "prefix-ngrams: prefix-n-gram token ids (.npz).")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv", "parquet", "npz"]),
              help="Default: from OUT's extension.")
@click.option("--no-tokens", is_flag=True, help="Leave the token strings out of an ids export.")
@click.option("--base", type=click.IntRange(min=2),
              help="sid2items: pack SIDs in this fixed base (what the reader expects, e.g. "
                   "8192) instead of the codebook sizes (a*K^2 + b*K + c).")
@click.option("--version", "version", type=int, help="A version other than the active one.")
def export(db, index_name, as_json, out, what, fmt, no_tokens, base, version):
    """Write the index's IDs for training or serving a generative model.

    \b
    semid export ids.jsonl                          # key, id, codes, suffix, <a_12><b_201>...
    semid export ids.parquet --no-tokens
    semid export next.jsonl --what next-codes       # prefix -> allowed next codes
    semid export grid.npy --what grid               # (L+1, N) int64 + grid.npy.keys.txt
    semid export codes.npy --what decoding          # (N, L+1) int64 sorted + codes.npy.keys.txt
    semid export sid2iid.json --what sid2items      # {"<a*K^2+b*K+c>": [{"pid": key, ...}]}
    semid export ngrams.npz --what prefix-ngrams    # keys, ids, ngrams (N, L), vocab_size
    """
    from . import export as ex

    single = {"grid": ".npy", "decoding": ".npy", "sid2items": ".json", "prefix-ngrams": ".npz"}
    if what in single:
        if fmt is not None or not out.endswith(single[what]):
            _fail(f"--what {what} writes one {single[what]} file: name OUT "
                  f"something{single[what]}")
    else:
        allowed = ex.FORMATS if what == "ids" else ("jsonl", "parquet", "npz")
        fmt = ex.format_of(out, fmt, allowed)
    if base is not None and what != "sid2items":
        _fail("--base applies to --what sid2items only")
    # files appear only complete: an export that fails leaves what was there before
    n, extra = _export(db, index_name, out, what, fmt, no_tokens, version, base)
    _emit(as_json, {"out": out, "what": what, "rows": n}, f"wrote {n:,}{extra} to {out}")


def _export(db, index_name, out, what, fmt, no_tokens, version, base) -> tuple[int, str]:
    from . import export as ex

    with _open(db, index_name) as idx:
        if what == "ids":
            n, extra = ex.write_ids(out, fmt, idx.id_pages(version=version),
                                    tokens=not no_tokens), " items"
        elif what == "next-codes":
            n, extra = ex.write_next_codes(out, fmt, idx.id_pages(version=version)), \
                " prefixes"
        elif what == "sid2items":
            n, extra = ex.write_sid2items(out, idx.id_pages(version=version),
                                          idx.codebook_sizes, base=base), " packed SIDs"
        elif what == "prefix-ngrams":
            n, extra = ex.write_prefix_ngrams(out, idx.id_pages(version=version),
                                              idx.codebook_sizes), " items"
        else:
            n = idx.count(version=version)
            keys_file = ex.write_grid(out, idx.id_pages(version=version), n, idx.n_levels,
                                      rows=what == "decoding")
            extra = f" items (+ {keys_file})"
    return n, extra
