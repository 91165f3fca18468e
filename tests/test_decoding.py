"""Constrained decoding: the decoding table against brute force, and generation with a real
(tiny, randomly initialised) transformers model and tokenizer built here, with no download."""

import itertools
import json

import numpy as np
import pytest
import tokenizers  # noqa: F401 - in the test extra, as transformers is: missing fails, never skips
import torch
import transformers
from hypothesis import given, settings
from hypothesis import strategies as st

from semid_index import SemanticIdIndex
from semid_index.decoding import (DecodingTable, PrefixAllowedTokens, SemanticIdLogitsProcessor,
                                  TokenLayout, token_vocabulary)
from semid_index.errors import (ConfigError, EmptyInputError, InvalidCodesError,
                                StaleTableError)
from semid_index.export import packed_sids, prefix_ngram_ids, write_sid2items

from conftest import assert_one_line_error, gaussian_mixture, semid


def catalog(n, sizes, seed):
    """(N, L + 1) IDs: random codes, suffixes numbering the items of each full code."""
    r = np.random.default_rng(seed)
    codes = np.stack([r.integers(0, k, n) for k in sizes], 1)
    codes = codes[np.lexsort(codes.T[::-1])]
    new = np.r_[True, (codes[1:] != codes[:-1]).any(1)]
    first = np.flatnonzero(new)
    return np.c_[codes, np.arange(n) - first[np.cumsum(new) - 1]]


def brute_next(rows, prefix, banned=frozenset()):
    d = len(prefix)
    return {r[d] for r in rows if r[:d] == prefix and r not in banned}


# ---------------------------------------------------------------------- the table itself
@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(1, 7), min_size=1, max_size=3), n=st.integers(1, 70),
       seed=st.integers(0, 10_000), n_ban=st.integers(0, 6), n_ban_prefix=st.integers(0, 2))
def test_allowed_equals_brute_force_at_every_depth_with_and_without_bans(
        sizes, n, seed, n_ban, n_ban_prefix):
    ids = catalog(n, sizes, seed)
    r = np.random.default_rng(seed + 1)
    perm = r.permutation(n)
    table = DecodingTable.from_ids(ids[perm], keys=[f"k{i}" for i in perm], sizes=sizes)
    rows = [tuple(x) for x in ids.tolist()]
    n_levels = len(sizes)
    assert table.widths == (*sizes, int(ids[:, -1].max()) + 1)
    banned_rows = {rows[i] for i in r.choice(n, size=min(n, n_ban), replace=False)}
    ban_prefixes = [rows[i][:int(r.integers(1, n_levels + 1))]
                    for i in r.integers(0, n, n_ban_prefix)]
    for p in ban_prefixes:
        banned_rows |= {x for x in rows if x[:len(p)] == p}
    # ban half the items by key and half by ID, and the prefixes
    items = [f"k{rows.index(x)}" if j % 2 else x for j, x in enumerate(sorted(banned_rows))]
    ex = table.exclusion(items=[x for x in items if isinstance(x, str)]) | \
        table.exclusion(items=[x for x in items if not isinstance(x, str)],
                        prefixes=ban_prefixes)
    assert ex.n_banned == len(banned_rows) and ex.n_unknown == 0
    for d in range(n_levels + 1):
        # every prefix in range and one step out of it on each side (never issued)
        prefixes = list(itertools.product(*[range(-1, w + 1) for w in table.widths[:d]]))
        p = np.array(prefixes, dtype=np.int64).reshape(len(prefixes), d)
        plain, with_bans = table.allowed(p).numpy(), table.allowed(p, ex).numpy()
        assert plain.shape == with_bans.shape == (len(prefixes), table.k_max)
        for i, prefix in enumerate(prefixes):
            assert set(np.flatnonzero(plain[i])) == brute_next(rows, prefix)
            assert set(np.flatnonzero(with_bans[i])) == brute_next(rows, prefix, banned_rows)
    assert table.resolve(ids) == [f"k{i}" for i in range(n)]
    outside = ids.copy()
    outside[:, -1] += ids[:, -1].max() + 1  # suffixes never issued
    assert table.resolve(outside) == [None] * n


@pytest.mark.parametrize("seed", range(4))
def test_the_torch_path_gives_the_numpy_paths_masks(seed):
    """Off the CPU the queries run as torch ops (padded, no host sync); run them on the CPU
    here against the numpy path, so CI checks the GPU's algorithm without a GPU."""
    r = np.random.default_rng(seed)
    sizes = [int(v) for v in r.integers(2, 40, 3)]
    ids = catalog(int(r.integers(50, 3000)), sizes, seed)
    fast = DecodingTable.from_ids(ids, sizes=sizes)
    torch_ops = DecodingTable.from_ids(ids, sizes=sizes).to("cpu", _torch_ops=True)
    banned = ids[r.integers(0, len(ids), 20)]
    bans = [fast.exclusion(items=banned, prefixes=[tuple(ids[0, :2])])]
    bans_t = [torch_ops.exclusion(items=banned, prefixes=[tuple(ids[0, :2])])]
    for d in range(4):
        p = np.r_[ids[r.integers(0, len(ids), 64), :d], r.integers(-1, 41, (16, d))]
        assert torch.equal(fast.allowed(p), torch_ops.allowed(p))
        assert torch.equal(fast.allowed(p, bans * len(p)), torch_ops.allowed(p, bans_t * len(p)))
    layout = TokenLayout.contiguous(fast, start=3, eos_id=1)
    for t in range(5):
        inp = torch.cat([torch.zeros(32, 2, dtype=torch.int64),
                         layout.to_tokens(ids[r.integers(0, len(ids), 32), :t])], 1)
        scores = torch.randn(32, 3 + sum(layout.widths))
        a = SemanticIdLogitsProcessor(fast, layout, prompt_length=2)(inp, scores)
        b = SemanticIdLogitsProcessor(torch_ops, layout, prompt_length=2)(inp, scores.double())
        assert torch.equal(torch.isfinite(a), torch.isfinite(b))  # the torch masking path too


def test_per_request_bans_apply_to_their_rows_only():
    ids = catalog(300, [5, 7, 3], 0)
    table = DecodingTable.from_ids(ids, sizes=[5, 7, 3])
    a = table.exclusion(prefixes=[(int(ids[0, 0]),)])
    b = table.exclusion(items=[ids[-1]])
    p = np.zeros((3, 0), dtype=np.int64)
    ok = table.allowed(p, [a, None, b])
    assert not ok[0, ids[0, 0]] and ok[1, ids[0, 0]] and ok[2, ids[0, 0]]
    full = torch.as_tensor(ids[-1:, :-1]).repeat(3, 1)
    ok = table.allowed(full, [a, None, b])
    assert ok[0, ids[-1, -1]] and ok[1, ids[-1, -1]] and not ok[2, ids[-1, -1]]


def test_table_rejects_bad_ids_with_clear_errors():
    with pytest.raises(EmptyInputError):
        DecodingTable.from_ids(np.zeros((0, 3), dtype=np.int64))
    with pytest.raises(InvalidCodesError, match="more than once"):
        DecodingTable.from_ids([[1, 2, 0], [0, 1, 0], [1, 2, 0]])
    with pytest.raises(InvalidCodesError, match="non-negative"):
        DecodingTable.from_ids([[1, -2, 0]])
    with pytest.raises(InvalidCodesError, match="outside its codebook"):
        DecodingTable.from_ids([[1, 9, 0]], sizes=[4, 8])
    with pytest.raises(InvalidCodesError, match="integers"):
        DecodingTable.from_ids([[1.5, 2, 0]])
    t = DecodingTable.from_ids([[1, 2, 0], [1, 3, 0]])
    with pytest.raises(InvalidCodesError, match="d <= 2"):
        t.allowed([[1, 2, 0]])
    for bad in ([[1], [1, 2]], [[1.5]], [[True]], "12"):
        with pytest.raises(InvalidCodesError, match="integer array"):
            t.allowed(bad)
    assert t.allowed(np.array([[1]], dtype=np.uint8))[0, :4].tolist() == [0, 0, 1, 1]
    with pytest.raises(InvalidCodesError, match="1..2 codes"):
        t.exclusion(prefixes=[(1, 2, 0)])
    with pytest.raises(ConfigError, match="no item keys"):
        t.resolve([[1, 2, 0]])
    other = DecodingTable.from_ids([[1, 2, 0], [1, 3, 0]])
    with pytest.raises(ConfigError, match="another decoding table"):
        t.allowed([[1]], other.exclusion(items=[(1, 2, 0)]))


def test_memory_stays_small_per_item():
    ids = catalog(1_000_000, [256, 256, 256], 3)  # uniform codes: the most distinct prefixes
    table = DecodingTable.from_ids(ids, sizes=[256, 256, 256])
    assert table.bytes_per_item <= 16
    assert table.node_counts[0] == 1 and table.node_counts[-1] == len(ids)


# ---------------------------------------------------------------------- token layouts
def test_layouts_round_trip_and_refuse_overlaps():
    table = DecodingTable.from_ids(catalog(500, [6, 5, 4], 1), sizes=[6, 5, 4])
    layout = TokenLayout.contiguous(table, start=10, eos_id=2, n_suffix=64)
    assert layout.offsets == (10, 16, 21, 25) and layout.widths == (6, 5, 4, 64)
    ids = catalog(500, [6, 5, 4], 1)
    tokens = layout.to_tokens(ids)
    assert torch.equal(layout.to_codes(tokens), torch.as_tensor(ids))
    assert layout.to_codes([[2, 11]]).tolist() == [[-1, -1]]  # eos, and a level-2 token first
    with pytest.raises(ConfigError, match="overlap"):
        TokenLayout(offsets=(0, 3), widths=(4, 4), eos_id=9)
    with pytest.raises(ConfigError, match="eos_id"):
        TokenLayout(offsets=(0, 4), widths=(4, 4), eos_id=5)
    with pytest.raises(InvalidCodesError):
        layout.to_tokens([[6, 0, 0, 0]])
    assert token_vocabulary((2, 1, 3)) == ["<a_0>", "<a_1>", "<b_0>", "<c_0>", "<c_1>", "<c_2>"]


def make_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = ["<pad>", "<eos>"] + [f"w{i}" for i in range(30)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                                eos_token="<eos>")


def make_model(vocab_size, seed=0):
    torch.manual_seed(seed)
    cfg = transformers.GPT2Config(vocab_size=vocab_size, n_positions=64, n_embd=48, n_layer=2,
                                  n_head=2, bos_token_id=1, eos_token_id=1, pad_token_id=0)
    return transformers.GPT2LMHeadModel(cfg).eval()


def test_tokenizer_gets_the_index_tokens_and_round_trips_ids():
    table = DecodingTable.from_ids(catalog(400, [7, 5, 3], 2), sizes=[7, 5, 3])
    tok = make_tokenizer()
    layout = TokenLayout.for_tokenizer(tok, table, n_suffix=12)
    assert table.widths[-1] < 12 and len(tok) == 32 + 7 + 5 + 3 + 12
    assert layout.eos_id == tok.eos_token_id
    sid = catalog(400, [7, 5, 3], 2)[123]
    text = "".join(f"<{'abcd'[i]}_{v}>" for i, v in enumerate(sid))
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert layout.to_codes([ids]).tolist() == [sid.tolist()]
    assert tok.decode(layout.to_tokens([sid])[0]).replace(" ", "") == text
    # adding again is a no-op that gives the same layout
    assert TokenLayout.for_tokenizer(tok, table, n_suffix=12) == layout


# ---------------------------------------------------------------------- generation
def generate(model, prompts, *, num_beams, steps, **kw):
    out = model.generate(prompts, attention_mask=torch.ones_like(prompts),
                         max_new_tokens=steps, num_beams=num_beams,
                         num_return_sequences=num_beams, do_sample=False, pad_token_id=0,
                         eos_token_id=1, length_penalty=0.0, output_scores=True,
                         return_dict_in_generate=True, **kw)
    return out.sequences[:, prompts.shape[1]:], out.sequences_scores


def issued(table, layout, generated):
    """Per sequence: the row of the generated ID if it is an issued ID followed by the end
    token, else -1."""
    n = table.n_levels + 1
    codes = layout.to_codes(generated[:, :n])
    rows = table.rows_of(codes.clamp(min=0))
    ok = (codes >= 0).all(1) & (rows >= 0) & (generated[:, n] == layout.eos_id)
    return torch.where(ok, rows, -1)


@pytest.fixture(scope="module")
def lm_setup():
    sizes = [16, 12, 10]
    ids = catalog(3000, sizes, 4)
    table = DecodingTable.from_ids(ids, keys=[f"item{i}" for i in range(len(ids))], sizes=sizes)
    tok = make_tokenizer()
    layout = TokenLayout.for_tokenizer(tok, table)
    model = make_model(len(tok))
    return table, layout, model


def prompts(n, length=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, 32, (n, length), generator=g)


def test_constrained_beam_search_returns_only_issued_ids_and_unconstrained_does_not(lm_setup):
    table, layout, model = lm_setup
    steps = table.n_levels + 2
    x = prompts(24)
    free, _ = generate(model, x, num_beams=8, steps=steps)
    assert (issued(table, layout, free) < 0).float().mean() > 0.5  # random weights: mostly junk
    proc = SemanticIdLogitsProcessor(table, layout, prompt_length=x.shape[1], num_beams=8)
    gen, _ = generate(model, x, num_beams=8, steps=steps,
                      logits_processor=transformers.LogitsProcessorList([proc]))
    rows = issued(table, layout, gen)
    assert (rows >= 0).all(), gen[rows < 0][:5]  # 100% of 24 x 8 beams
    assert proc.n_forced_end == 0
    keys = table.resolve(layout.to_codes(gen[:, :table.n_levels + 1]))
    assert None not in keys
    # the same run through prefix_allowed_tokens_fn gives the same beams
    fn = PrefixAllowedTokens(table, layout, prompt_length=x.shape[1])
    again, _ = generate(model, x[:4], num_beams=8, steps=steps, prefix_allowed_tokens_fn=fn)
    assert torch.equal(again, gen[:32])


def test_top_beams_equal_brute_force_on_a_tiny_catalog():
    sizes = [3, 4, 2]
    ids = catalog(7, sizes, 11)
    table = DecodingTable.from_ids(ids, sizes=sizes)
    tok = make_tokenizer()
    layout = TokenLayout.for_tokenizer(tok, table)
    model = make_model(len(tok), seed=3)
    x = prompts(3, seed=5)
    proc = SemanticIdLogitsProcessor(table, layout, prompt_length=x.shape[1], num_beams=8)
    gen, scores = generate(model, x, num_beams=8, steps=table.n_levels + 2,
                           logits_processor=transformers.LogitsProcessorList([proc]))
    gen, scores = gen.view(3, 8, -1), scores.view(3, 8)
    candidates = torch.cat([layout.to_tokens(ids), torch.full((len(ids), 1), layout.eos_id)], 1)
    for b in range(3):
        seqs = torch.cat([x[b].expand(len(ids), -1), candidates], 1)
        with torch.no_grad():
            logp = torch.log_softmax(model(seqs).logits.float(), -1)
        start = x.shape[1]
        brute = logp[:, start - 1:-1].gather(2, candidates[:, :, None]).squeeze(2).sum(1)
        order = torch.argsort(brute, descending=True)
        # all 7 items fit in 8 beams: nothing is pruned, so the beams are the exact ranking
        top = issued(table, layout, gen[b])[:len(ids)]
        assert top.tolist() == order.tolist()
        assert torch.allclose(scores[b, :len(ids)], brute[order], atol=1e-4)


def test_bans_never_generated_and_a_fully_banned_request_only_ends(lm_setup):
    table, layout, model = lm_setup
    x = prompts(4, seed=9)
    steps = table.n_levels + 2
    base = SemanticIdLogitsProcessor(table, layout, prompt_length=x.shape[1], num_beams=8)
    first, _ = generate(model, x, num_beams=8, steps=steps,
                        logits_processor=transformers.LogitsProcessorList([base]))
    seen = issued(table, layout, first)
    top_prefix = tuple(layout.to_codes(first[:1, :1])[0].tolist())
    everything = table.exclusion(prefixes=[(c,) for c in range(table.widths[0])])
    bans = [table.exclusion(items=[table.keys[r] for r in seen[:8].tolist()]),
            table.exclusion(prefixes=[top_prefix]), everything, None]
    proc = SemanticIdLogitsProcessor(table, layout, prompt_length=x.shape[1], num_beams=8,
                                     exclusions=bans)
    gen, _ = generate(model, x, num_beams=8, steps=steps,
                      logits_processor=transformers.LogitsProcessorList([proc]))
    rows = issued(table, layout, gen).view(4, 8)
    assert not set(rows[0].tolist()) & set(seen[:8].tolist()) and (rows[0] >= 0).all()
    assert (layout.to_codes(gen.view(4, 8, -1)[1, :, :1]) != top_prefix[0]).all()
    assert (rows[1] >= 0).all()
    # everything banned: the end token at once, counted; never an unconstrained step
    assert (gen.view(4, 8, -1)[2, :, 0] == layout.eos_id).all() and (rows[2] < 0).all()
    assert proc.n_forced_end > 0
    assert torch.equal(rows[3], seen.view(4, 8)[3])  # no bans: as before


def test_malformed_prefix_forces_the_end_token_and_counts_it():
    table = DecodingTable.from_ids(catalog(50, [4, 4], 0), sizes=[4, 4])
    layout = TokenLayout.contiguous(table, start=10, eos_id=1)
    proc = SemanticIdLogitsProcessor(table, layout, prompt_length=2)
    scores = torch.zeros(2, 40)
    valid_first = int(table.allowed(np.zeros((1, 0), dtype=np.int64))[0].nonzero()[0])
    inp = torch.tensor([[5, 5, 7], [5, 5, 10 + valid_first]])  # row 0: not a level-1 token
    out = proc(inp, scores)
    assert torch.isinf(out[0]).sum() == 39 and out[0, 1] == 0
    assert torch.isfinite(out[1]).sum() >= 1 and torch.isinf(out[1, 1])
    assert proc.n_forced_end == 1


# ---------------------------------------------------------------------- with a real index
def fitted_index(url):
    x, _ = gaussian_mixture(1500, 12, 20, seed=7)
    keys = [f"m{i}" for i in range(len(x))]
    idx = SemanticIdIndex.create(url, "dec", n_levels=3, codebook_size=8)
    idx.fit(keys[:1400], x[:1400], progress=False)
    return idx, keys, x


@pytest.fixture
def fitted(db_url):
    idx, keys, x = fitted_index(db_url)
    yield idx, keys, x
    idx.close()


def test_table_from_index_resolves_refreshes_and_detects_a_refit(fitted):
    idx, keys, x = fitted
    table = DecodingTable.from_index(idx)
    assert table.version == idx.active_version and table.n_items == 1400
    ks, ids = idx.id_arrays()
    assert table.resolve(ids, index=idx) == ks == table.resolve(ids)
    # through the index: works without held keys, and sees removals the snapshot does not
    bare = DecodingTable.from_index(idx, keys=False)
    assert bare.keys is None and bare.resolve(ids[:50], index=idx) == ks[:50]
    assert idx.keys_of([str(idx.lookup(k)) for k in ks[:3]]) == ks[:3]
    assert idx.keys_of([idx.lookup(ks[3]), [99, 0, 0, 0], [0, 0, 0, 10**6]]) == [ks[3], None,
                                                                                 None]
    for bad in ([[1, 2, 3]], [[1, 2, 3, -1]], [[1.0, 2, 3, 0]], [[True, 2, 3, 0]], [7]):
        with pytest.raises(InvalidCodesError):
            idx.keys_of(bad)
    with pytest.raises(ConfigError, match="sequence of IDs"):
        idx.keys_of("1-2-3-0")
    assert idx.keys_of([[2**70, 0, 0, 0]]) == [None] and idx.keys_of([]) == []
    idx.remove([ks[0]])
    assert table.resolve(ids[:1], index=idx) == [None] and table.resolve(ids[:1]) == [ks[0]]
    new_ids = idx.add(keys[1400:], x[1400:], progress=False)
    assert all(k is None for k in table.resolve(new_ids))  # not in the snapshot yet
    stale = table.exclusion(items=keys[:5])
    table.refresh(idx)
    assert table.n_items == 1499 and table.resolve(new_ids) == keys[1400:]  # 1 removed
    with pytest.raises(ConfigError, match="before table.refresh"):  # its rows moved
        table.allowed([[0]], stale)
    # a new item is generatable: ban everything else and it is the only path left
    only = table.exclusion(items=[k for k in keys if k != keys[1450]])
    p = torch.zeros((1, 0), dtype=torch.int64)
    sid = new_ids[50]
    for d, code in enumerate([*sid.levels, sid.suffix]):
        ok = table.allowed(p, only)[0]
        assert ok.nonzero().flatten().tolist() == [code]
        p = torch.cat([p, torch.tensor([[code]])], 1)
    idx.fit(keys, x[::-1].copy(), progress=False)  # a refit activates version 2
    with pytest.raises(StaleTableError, match="version 1.*version 2"):
        table.resolve(ids, index=idx)
    with pytest.raises(StaleTableError):
        SemanticIdLogitsProcessor(table, TokenLayout.contiguous(table, 2, 1), prompt_length=0,
                                  index=idx)
    assert table.refresh(idx).version == 2


def test_exports_for_serving_engines(tmp_path):
    db = f"sqlite:///{tmp_path / 'e.db'}"
    idx, _, _ = fitted_index(db)
    keys, ids = idx.id_arrays()
    idx.close()
    semid("export", str(tmp_path / "codes.npy"), "--what", "decoding", "-i", "dec", db=db)
    arr = np.load(tmp_path / "codes.npy")
    assert arr.shape == ids.shape and (arr == ids).all()
    assert (tmp_path / "codes.npy.keys.txt").read_text().split("\n")[:-1] == keys
    semid("export", str(tmp_path / "sid2iid.json"), "--what", "sid2items", "-i", "dec", db=db)
    m = json.loads((tmp_path / "sid2iid.json").read_text())
    expect: dict = {}
    for k, row in zip(keys, ids.tolist()):
        p = str(row[0] * 64 + row[1] * 8 + row[2])  # a*K^2 + b*K + c
        expect.setdefault(p, []).append({"pid": k, "suffix": row[3]})
    assert m == expect
    semid("export", str(tmp_path / "b.json"), "--what", "sid2items", "--base", "8192", "-i",
          "dec", db=db)
    assert set(json.loads((tmp_path / "b.json").read_text())) == {
        str(v) for v in packed_sids(ids[:, :-1], [8, 8, 8], base=8192)}
    semid("export", str(tmp_path / "ng.npz"), "--what", "prefix-ngrams", "-i", "dec", db=db)
    z = np.load(tmp_path / "ng.npz")
    assert z["keys"].tolist() == keys and int(z["vocab_size"]) == 8 + 64 + 512
    ng = z["ngrams"]
    assert (ng[:, 0] == ids[:, 0]).all() and (ng[:, 1] == 8 + ids[:, 0] * 8 + ids[:, 1]).all()
    # stable: the same prefix has the same id in any catalog
    assert (prefix_ngram_ids(ids[::7], [8, 8, 8])[0] == ng[::7]).all()
    code, _, err = semid("export", str(tmp_path / "x.json"), "--what", "decoding", "-i", "dec",
                         db=db, check=False)
    assert_one_line_error(code, err, ".npy")


def test_sid2items_streams_groups_across_pages_and_escapes_keys(tmp_path):
    ids = np.array([[0, 1, 0], [2, 3, 0], [2, 3, 1], [2, 3, 2], [3, 0, 0]])
    keys = ['a"quote', "b\\slash", "c\nline", "d é", "e"]
    pages = [(keys[:3], ids[:3]), (keys[3:], ids[3:])]  # the (2, 3) group spans two pages
    n = write_sid2items(tmp_path / "m.json", pages, [4, 5])
    m = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    assert n == 3 and m == {"1": [{"pid": keys[0], "suffix": 0}],
                            "13": [{"pid": keys[1], "suffix": 0}, {"pid": keys[2], "suffix": 1},
                                   {"pid": keys[3], "suffix": 2}],
                            "15": [{"pid": keys[4], "suffix": 0}]}
    assert write_sid2items(tmp_path / "e.json", [], [4, 5]) == 0
    assert json.loads((tmp_path / "e.json").read_text()) == {}
    with pytest.raises(ConfigError, match="base"):
        write_sid2items(tmp_path / "b.json", pages, [4, 5], base=3)
    assert not (tmp_path / "b.json").exists()
