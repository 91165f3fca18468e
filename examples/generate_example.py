"""Generate semantic IDs with a model, constrained by the index (transformers, CPU, ~1 minute).

An index gives every word of a catalog (GloVe words when the data package is installed, else a
synthetic catalog) an ID. A tiny GPT-2 built from a config, with a tokenizer built here and
extended with the index's ``<a_12>`` tokens, learns for a few hundred steps to write an item's ID
after the item's name. Beam search then runs with and without the index as a constraint: the
constrained beams are always issued IDs and map back to items; request-time bans and an item
added after the table was built show the rest.

    python examples/generate_example.py --db sqlite:///generate.db
"""

from __future__ import annotations

import argparse
import time

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (GPT2Config, GPT2LMHeadModel, LogitsProcessorList,
                          PreTrainedTokenizerFast)
from transformers.utils import logging as hf_logging

from semid_index import SemanticIdIndex
from semid_index.datasets import glove_or_mixture
from semid_index.decoding import DecodingTable, SemanticIdLogitsProcessor, TokenLayout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--db", default="sqlite:///generate.db")
    ap.add_argument("--items", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=400, help="training steps of the tiny model")
    ap.add_argument("--beams", type=int, default=8)
    args = ap.parse_args()
    torch.manual_seed(0)
    hf_logging.set_verbosity_error()

    # 1. an index: every item gets a 3-level ID (the last 100 items are added later)
    x, keys, why = glove_or_mixture(args.items + 100)
    print(f"catalog: {len(keys):,} items{' (' + why + ')' if why else ''}")
    if args.db.startswith("sqlite:///") and args.db != "sqlite:///:memory:":
        import pathlib
        pathlib.Path(args.db[len("sqlite:///"):]).unlink(missing_ok=True)
    index = SemanticIdIndex.create(args.db, "words", n_levels=3, codebook_size=16,
                                   max_per_code=1)
    index.fit(keys[:-100], x[:-100], progress=False)

    # 2. the decoding table and a tokenizer that knows the item names and the ID tokens
    table = DecodingTable.from_index(index)
    print(f"decoding table: {table.n_items:,} IDs, {table.nbytes:,} bytes "
          f"({table.bytes_per_item:.1f} per item), widths {table.widths}")
    vocab = {"<pad>": 0, "<eos>": 1, "<unk>": 2}
    for k in keys:
        vocab.setdefault(k, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>",
                                        eos_token="<eos>", unk_token="<unk>")
    layout = TokenLayout.for_tokenizer(tokenizer, table, n_suffix=4)  # room for 4 per code
    print(f"tokenizer: {len(vocab):,} words + {len(tokenizer) - len(vocab)} ID tokens "
          f"({' '.join(table.vocabulary(4)[:3])} ...)")

    # 3. a tiny model learns "name -> ID" (prompt: the item's name as one token)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_positions=16, n_embd=96,
                                       n_layer=2, n_head=4, bos_token_id=1, eos_token_id=1,
                                       pad_token_id=0))
    item_keys, ids = index.id_arrays()
    names = torch.tensor(tokenizer.convert_tokens_to_ids(item_keys))[:, None]
    seqs = torch.cat([names, layout.to_tokens(ids), torch.full((len(ids), 1), 1)], 1)
    labels = seqs.clone()
    labels[:, 0] = -100  # learn the ID and the end token, not the name
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    t0 = time.perf_counter()
    model.train()
    for step in range(args.steps):
        batch = torch.randint(0, len(seqs), (256,))
        loss = model(seqs[batch], labels=labels[batch]).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step in (0, args.steps - 1):
            print(f"  step {step + 1:4d}: loss {loss.item():.3f}")
    model.eval()
    print(f"trained {args.steps} steps in {time.perf_counter() - t0:.0f} s")

    # 4. beam search, unconstrained and constrained, for a few items
    def beams(prompt_keys, **kw):
        prompt = torch.tensor(tokenizer.convert_tokens_to_ids(prompt_keys))[:, None]
        out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=5,
                             num_beams=args.beams, num_return_sequences=args.beams,
                             do_sample=False, pad_token_id=0, eos_token_id=1, **kw)
        gen = out[:, 1:5]
        return table.resolve(layout.to_codes(gen).clamp(min=0)), gen

    def constrained(prompt_keys, exclusions=None):
        proc = SemanticIdLogitsProcessor(table, layout, prompt_length=1, num_beams=args.beams,
                                         exclusions=exclusions, index=index)
        return beams(prompt_keys, logits_processor=LogitsProcessorList([proc]))[0]

    sample = item_keys[::len(item_keys) // 40][:40]
    free, gen = beams(sample)
    codes_ok = (layout.to_codes(gen) >= 0).all(1)
    print(f"\nunconstrained beams: {sum(k is not None for k in free)} of {len(free)} are issued "
          f"IDs ({int((~codes_ok).sum())} are not even code sequences)")
    got = constrained(sample)
    hits = sum(got[i * args.beams] == k for i, k in enumerate(sample))
    print(f"constrained beams:   {sum(k is not None for k in got)} of {len(got)} are issued "
          f"IDs; the top beam is the prompt's own item for {hits} of {len(sample)} prompts")
    for i, k in enumerate(sample[:3]):
        print(f"  {k!r:>16} -> {', '.join(map(repr, got[i * args.beams:i * args.beams + 5]))}")

    # 5. a request-time ban: the items already shown are never generated again
    shown = got[:args.beams]
    again = constrained(sample[:1], [table.exclusion(items=shown)])
    print(f"\nbanning the {len(shown)} items shown for {sample[0]!r}: next beams "
          f"{', '.join(map(repr, again[:5]))} (none of the shown: "
          f"{not set(again) & set(shown)})")

    # 6. freshness: items added after the table was built become generatable after refresh
    new = index.add(keys[-100:], x[-100:], progress=False)
    before = table.resolve(new)
    table.refresh(index)
    after = table.resolve(new)
    print(f"\nadded {len(new)} items: {sum(k is not None for k in before)} resolvable before "
          f"refresh, {sum(k is not None for k in after)} after ({table.n_items:,} IDs)")
    index.close()


if __name__ == "__main__":
    main()
