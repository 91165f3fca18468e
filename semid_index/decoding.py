"""Constrained decoding: the index as a generation-time constraint (torch; transformers optional).

A generative recommender emits an item's semantic ID token by token: the L level codes, then the
suffix. :class:`DecodingTable` holds, for every prefix of every depth 0..L that occurs in the
index, the codes that may follow it, so a beam can only ever spell an *issued* ID (suffix
included), never just a plausible code tuple. It is built from the index's sorted ID array and
answers a whole batch of beams with a few tensor operations, on CPU or GPU:

- ``table.allowed(prefixes)`` -> (B, K_max) bool, the valid next codes of each prefix;
- ``table.resolve(full_ids)`` -> item keys (None for an ID that was never issued);
- ``table.exclusion(items=..., prefixes=...)`` -> request-time bans, applied without a rebuild
  (a prefix whose every item is banned is no longer allowed);
- :class:`TokenLayout` maps codes to a model's vocabulary: per-level offsets into its own
  vocabulary, or a Hugging Face tokenizer extended with the index's ``<a_12>`` tokens;
- :class:`SemanticIdLogitsProcessor` (a ``transformers`` ``LogitsProcessor``) and
  :class:`PrefixAllowedTokens` (a ``prefix_allowed_tokens_fn``) mask every step of ``generate``.

Layout in memory (nodes of depth d are the distinct d-prefixes, in ID order; depth L + 1 are the
items themselves, in ID order). For every step d = 0..L (choosing position d):

- ``key[d]`` (M_{d+1},): ``parent * W_d + code`` of each node of depth d + 1, sorted, int32
  where it fits. A prefix is found with one ``searchsorted`` per level; a node's children are a
  contiguous run of ``key[d]``; a node's items are a contiguous range of rows.
- ``dense[d]`` (M_d, W_d) int32 child index (-1: none) for shallow steps where it is small
  (M_d * W_d <= max(65,536, N)): the first levels' masks are one gather.

That is 4 bytes per node of every depth plus the dense tables: ~8-9 bytes per item for 3 x 256
codes at 1M items (:attr:`DecodingTable.nbytes`); item keys, kept for :meth:`resolve`, are Python
strings on top (``keys=False`` leaves them out).

Freshness: a table is a snapshot of one version. :meth:`DecodingTable.refresh` rebuilds it from
the index (the read from the store dominates; see the README for the 1M-item figures), and
:meth:`DecodingTable.check` raises :class:`StaleTableError` once the index has activated another
version.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .errors import ConfigError, EmptyInputError, InvalidCodesError, StaleTableError
from .ids import SemanticId, token_heads

if TYPE_CHECKING:
    from .index import SemanticIdIndex

__all__ = ["DecodingTable", "Exclusion", "PrefixAllowedTokens", "SemanticIdLogitsProcessor",
           "TokenLayout", "token_vocabulary"]

BITMASK_BYTES = 4 << 20  # bit masks of steps, shallow first, take <= max(this, 6 N) bytes
_I32 = 2 ** 31 - 1
_SNAPSHOTS = itertools.count()
_PENALTY = {np.dtype(t).char: np.array([-np.inf, 0.0], dtype=t) for t in (np.float32, np.float64)}

try:  # transformers is optional: the processor is a plain callable without it
    from transformers import LogitsProcessor as _ProcessorBase
except ImportError:  # pragma: no cover - exercised only where transformers is missing
    _ProcessorBase = object  # type: ignore[assignment,misc]


def token_vocabulary(widths: Sequence[int]) -> list[str]:
    """The token strings of every position: ``<a_0> .. <a_{W_0-1}>, <b_0> ..``, the suffix's
    last, in the form :meth:`SemanticId.tokens` writes (``widths``: codes per position)."""
    return [f"{head}{c}>" for head, w in zip(token_heads(len(widths)), widths) for c in range(w)]


class _Ops:
    """The few array operations the queries need, for numpy (CPU) or torch (other devices):
    one algorithm, two array kinds."""

    ragged = True  # build CSR masks from the children that exist (needs their count on host)

    def asarray(self, a):
        return np.asarray(a)

    def numpy(self, a) -> np.ndarray:
        return np.asarray(a)

    def tensor(self, a) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a))

    def int64(self, a):
        return a.astype(np.int64, copy=False)

    def is_int(self, a) -> bool:
        return a.dtype.kind in "iu"

    def zeros_int(self, n: int):
        return np.zeros(n, dtype=np.int64)

    def zeros_bool(self, shape):
        return np.zeros(shape, dtype=bool)

    def arange(self, n: int):
        return np.arange(n)

    def where(self, cond, a, b):
        return np.where(cond, a, b)

    def low(self, a, v: int):
        """max(a, v) elementwise."""
        return np.maximum(a, v)

    def high(self, a, v: int):
        """min(a, v) elementwise."""
        return np.minimum(a, v)

    def repeat(self, a, counts):
        return np.repeat(a, counts)

    def searchsorted(self, key, q, right: bool = False):
        """Positions of q in the sorted key (q cast to key's dtype: it always fits)."""
        return np.searchsorted(key, q.astype(key.dtype, copy=False),
                               side="right" if right else "left").astype(np.int64, copy=False)

    def unpack(self, packed, w: int):
        """(B, ceil(w / 8)) uint8 little-endian bit rows -> (B, w) bool."""
        return np.unpackbits(packed, axis=1, count=w, bitorder="little").view(bool)


class _TorchOps(_Ops):
    ragged = False

    def __init__(self, device: torch.device):
        self.device = device
        self._shifts = torch.arange(8, dtype=torch.uint8, device=device)

    def asarray(self, a):
        return torch.as_tensor(np.asarray(a) if not isinstance(a, torch.Tensor) else a,
                               device=self.device)

    def numpy(self, a) -> np.ndarray:
        return a.cpu().numpy()

    def tensor(self, a) -> torch.Tensor:
        return a

    def int64(self, a):
        return a.long()

    def is_int(self, a) -> bool:
        return not (a.dtype.is_floating_point or a.dtype.is_complex or a.dtype == torch.bool)

    def zeros_int(self, n: int):
        return torch.zeros(n, dtype=torch.int64, device=self.device)

    def zeros_bool(self, shape):
        return torch.zeros(shape, dtype=torch.bool, device=self.device)

    def arange(self, n: int):
        return torch.arange(n, device=self.device)

    def where(self, cond, a, b):
        return torch.where(cond, a, b)

    def low(self, a, v: int):
        return a.clamp(min=v)

    def high(self, a, v: int):
        return a.clamp(max=v)

    def repeat(self, a, counts):
        return torch.repeat_interleave(a, counts)

    def searchsorted(self, key, q, right: bool = False):
        return torch.searchsorted(key, q.to(key.dtype), right=right).long()

    def unpack(self, packed, w: int):
        return ((packed[:, :, None] >> self._shifts) & 1).bool().flatten(1)[:, :w]


_NUMPY = _Ops()


class Exclusion:
    """Items banned for one request: sorted, disjoint ranges of item rows of one table.

    Made by :meth:`DecodingTable.exclusion`; combine two with ``a | b``. ``n_banned`` items are
    banned; ``n_unknown`` of the given items were not in the table (they cannot be generated
    anyway) and are ignored.
    """

    __slots__ = ("_table_id", "starts", "ends", "n_unknown")

    def __init__(self, table_id: int, starts: np.ndarray, ends: np.ndarray, n_unknown: int = 0):
        order = np.argsort(starts, kind="stable")
        s, e = starts[order].astype(np.int64), ends[order].astype(np.int64)
        if len(s):  # merge overlapping or touching ranges
            run_end = np.maximum.accumulate(e)
            first = np.flatnonzero(np.r_[True, s[1:] > run_end[:-1]])
            s, e = s[first], np.maximum.reduceat(e, first)
        self._table_id = table_id
        self.starts, self.ends = s, e
        self.n_unknown = int(n_unknown)

    @property
    def n_banned(self) -> int:
        return int((self.ends - self.starts).sum())

    def __or__(self, other: "Exclusion") -> "Exclusion":
        if not isinstance(other, Exclusion) or other._table_id != self._table_id:
            return NotImplemented
        return Exclusion(self._table_id, np.r_[self.starts, other.starts],
                         np.r_[self.ends, other.ends], self.n_unknown + other.n_unknown)

    def __repr__(self) -> str:
        return f"Exclusion(n_banned={self.n_banned}, ranges={len(self.starts)})"


class DecodingTable:
    """The valid next codes after every issued prefix, as tensors (see the module docstring).

    Build with :meth:`from_index` or :meth:`from_ids`. Attributes: ``n_levels`` L, ``widths``
    (W_0..W_L: the codebook sizes, then the number of suffixes in use), ``n_items``, ``version``
    (the index version it was built from, or None), ``device``, ``keys`` (item keys in ID order,
    or None).
    """

    def __init__(self, ids: np.ndarray, keys: Sequence[str] | None = None, *,
                 sizes: Sequence[int] | None = None, version: int | None = None,
                 device: str | torch.device = "cpu", _sorted: bool = False):
        ids = _id_array(ids)
        n, width = ids.shape
        n_levels = width - 1
        if keys is not None:
            keys = list(keys)
            if len(keys) != n:
                raise ConfigError(f"{len(keys)} keys for {n} IDs")
        if not _sorted:
            order = np.lexsort(ids.T[::-1])
            if not (order == np.arange(n)).all():
                ids = ids[order]
                keys = None if keys is None else [keys[i] for i in order.tolist()]
        if sizes is None:
            sizes = [int(ids[:, d].max()) + 1 for d in range(n_levels)]
        sizes = [int(s) for s in sizes]
        if len(sizes) != n_levels or any(s < 1 for s in sizes):
            raise ConfigError(f"sizes must be {n_levels} positive codebook sizes, got {sizes}")
        for d, k in enumerate(sizes):
            top = int(ids[:, d].max())
            if top >= k:
                raise InvalidCodesError(f"level {d + 1} has code {top}, outside its codebook of "
                                        f"{k} codes")
        self.n_levels = n_levels
        self.n_items = n
        self.widths: tuple[int, ...] = (*sizes, int(ids[:, -1].max()) + 1)
        self.version = version
        self.keys: list[str] | None = keys
        self._key_rows: dict[str, int] | None = None
        self._snapshot = next(_SNAPSHOTS)  # exclusions name the table state they were made for
        self._build(ids)
        self.device = torch.device("cpu")
        self.to(device)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_ids(cls, ids, keys: Sequence[str] | None = None, *,
                 sizes: Sequence[int] | None = None,
                 device: str | torch.device = "cpu") -> "DecodingTable":
        """A table of the given IDs.

        ids : (N, L + 1) non-negative ints, the L codes then the suffix, one row per item (any
            order; rows must be distinct). keys : N item keys for :meth:`resolve` (optional).
        sizes : the L codebook sizes (default: the largest code + 1 per level).
        """
        return cls(ids, keys, sizes=sizes, device=device)

    @classmethod
    def from_index(cls, index: "SemanticIdIndex", version: int | None = None, *,
                   device: str | torch.device = "cpu", keys: bool = True) -> "DecodingTable":
        """A table of every item of ``index``'s version (default: the active one), read from one
        snapshot. ``keys=False`` leaves the item keys out (less memory; no :meth:`resolve`)."""
        if version is None:
            version = index.active_version
            if version is None:
                index.id_arrays()  # raises the index's own NotFittedError
        item_keys, ids = index.id_arrays(version=version)
        if len(ids) == 0:
            raise EmptyInputError(f"index {index.name!r} version {version} has no items to "
                                  "decode")
        return cls(ids, item_keys if keys else None, sizes=index.codebook_sizes,
                   version=version, device=device, _sorted=True)

    def refresh(self, index: "SemanticIdIndex") -> "DecodingTable":
        """Rebuild in place from ``index``'s active version (items added or removed since, or a
        refit activated since); keeps the device and whether keys are held. Returns self."""
        fresh = DecodingTable.from_index(index, device=self.device, keys=self.keys is not None)
        self.__dict__.update(fresh.__dict__)
        return self

    def check(self, index: "SemanticIdIndex") -> None:
        """:class:`StaleTableError` unless the table was built from ``index``'s active
        version."""
        active = index.active_version
        if self.version is None or active != self.version:
            built = "from bare IDs" if self.version is None else f"from version {self.version}"
            raise StaleTableError(f"this decoding table was built {built}, but index "
                                  f"{index.name!r} has version {active} active: rebuild it "
                                  "with DecodingTable.from_index or table.refresh(index)")

    def _build(self, ids: np.ndarray) -> None:
        n, width = ids.shape
        diff = ids[1:] != ids[:-1]
        newpref = np.logical_or.accumulate(diff, axis=1) if n > 1 else diff
        if n > 1 and not newpref[:, -1].all():
            i = int(np.flatnonzero(~newpref[:, -1])[0])
            raise InvalidCodesError(f"ID {'-'.join(map(str, ids[i].tolist()))} appears more "
                                    "than once")
        keys: list[np.ndarray] = []
        bits: list[np.ndarray | None] = []
        kids: list[int] = []
        counts = [1]
        parent_of_row = np.zeros(n, dtype=np.int64)  # node of depth d holding each row
        budget = max(BITMASK_BYTES, 6 * n)  # bit masks, shallow steps first
        for d in range(width):
            start = np.r_[True, newpref[:, d]]
            rows = np.flatnonzero(start)
            parent = parent_of_row[rows]
            code = ids[rows, d]
            w = self.widths[d]
            m_parent = counts[-1]
            key = parent * w + code
            keys.append(key.astype(np.int32 if m_parent * w <= _I32 else np.int64))
            kids.append(int(np.bincount(parent, minlength=m_parent).max()))
            need = m_parent * -(-w // 8)
            if need <= budget:
                budget -= need
                mask = np.zeros((m_parent, w), dtype=bool)
                mask[parent, code] = True
                bits.append(np.packbits(mask, axis=1, bitorder="little"))
            else:
                bits.append(None)
            counts.append(len(rows))
            parent_of_row = np.cumsum(start) - 1
        self.node_counts: tuple[int, ...] = tuple(counts)  # M_0 = 1 .. M_{L+1} = N
        self._kids = kids
        self._np_key = keys
        self._np_bits = bits

    def to(self, device: str | torch.device, *, _torch_ops: bool = False) -> "DecodingTable":
        """Move the tensors to ``device`` (in place); returns self."""
        device = torch.device(device)
        self.device = device
        if device.type == "cpu" and not _torch_ops:  # numpy: far less per-call overhead
            self._ops: _Ops = _NUMPY
            self._key: list = self._np_key
            self._bits: list = self._np_bits
        else:
            self._ops = _TorchOps(device)
            self._key = [torch.from_numpy(k).to(device) for k in self._np_key]
            self._bits = [None if t is None else torch.from_numpy(t).to(device)
                          for t in self._np_bits]
        return self

    # ------------------------------------------------------------------ sizes
    @property
    def k_max(self) -> int:
        """The widest position: the second dimension of :meth:`allowed`."""
        return max(self.widths)

    @property
    def nbytes(self) -> int:
        """Bytes of the table's arrays (item keys, if held, not counted)."""
        return sum(k.nbytes for k in self._np_key) + \
            sum(0 if t is None else t.nbytes for t in self._np_bits)

    @property
    def bytes_per_item(self) -> float:
        return self.nbytes / self.n_items

    def vocabulary(self, n_suffix: int | None = None) -> list[str]:
        """The token strings a model needs for this table's IDs (see :func:`token_vocabulary`);
        ``n_suffix`` reserves suffix tokens beyond those in use now."""
        return token_vocabulary(self._layout_widths(n_suffix))

    def _layout_widths(self, n_suffix: int | None) -> tuple[int, ...]:
        if n_suffix is None:
            return self.widths
        if isinstance(n_suffix, bool) or not isinstance(n_suffix, int) or n_suffix < 1:
            raise ConfigError(f"n_suffix must be a positive int, got {n_suffix!r}")
        return (*self.widths[:-1], max(n_suffix, self.widths[-1]))

    def __repr__(self) -> str:
        return (f"DecodingTable(n_items={self.n_items}, widths={self.widths}, "
                f"version={self.version}, device={self.device}, "
                f"bytes_per_item={self.bytes_per_item:.1f})")

    # ------------------------------------------------------------------ queries
    def _prefix_array(self, prefixes, max_depth: int):
        """(B, d) int64 codes as the table's array kind (numpy on CPU, torch elsewhere)."""
        if isinstance(prefixes, torch.Tensor):
            prefixes = prefixes.detach()
            prefixes = prefixes.cpu().numpy() if self.device.type == "cpu" else \
                prefixes.to(self.device)
        try:
            a = self._ops.asarray(prefixes)
        except (ValueError, TypeError) as e:
            raise InvalidCodesError(f"prefixes must be a (B, d) integer array: {e}") from None
        if a.ndim == 1 and a.shape[0] == 0:
            a = a.reshape(1, 0)
        if a.ndim != 2 or a.shape[1] > max_depth or \
                (a.shape[0] * a.shape[1] and not self._ops.is_int(a)):
            raise InvalidCodesError(f"prefixes must be a (B, d) integer array with d <= "
                                    f"{max_depth}, got shape {tuple(a.shape)} of {a.dtype}")
        return self._ops.int64(a)

    def _nodes(self, prefixes):
        """(B,) node index of each (B, d) prefix at depth d; -1 where it is not issued."""
        ops = self._ops
        b, depth = prefixes.shape
        node = ops.zeros_int(b)
        for d in range(depth):
            w = self.widths[d]
            code = prefixes[:, d]
            ok = (node >= 0) & (code >= 0) & (code < w)
            key = self._key[d]
            q = ops.low(node, 0) * w + ops.high(ops.low(code, 0), w - 1)
            pos = ops.high(ops.searchsorted(key, q), len(key) - 1)
            node = ops.where(ok & (key[pos] == q), pos, -1)
        return node

    def _first_rows(self, node, depth: int):
        """First item row under each node of ``depth`` (node = M_depth gives N)."""
        for d in range(depth, self.n_levels + 1):
            node = self._ops.searchsorted(self._key[d], node * self.widths[d])
        return node

    def allowed(self, prefixes, exclusion: "Exclusion | Sequence[Exclusion | None] | None" = None,
                *, rows=None) -> torch.Tensor:
        """(B, K_max) bool tensor on the table's device: column c is True where code c may
        follow the row's prefix.

        prefixes : (B, d) codes, 0 <= d <= L (d = L asks for the suffixes). A prefix that was
            never issued (or has codes out of range) gets an all-False row.
        exclusion : one :class:`Exclusion` for every row, or one per request (None: no bans);
            with a sequence, ``rows`` (B,) gives each row's request (default: row b is request
            b). A next code is not allowed when every item under it is banned.
        """
        p = self._prefix_array(prefixes, self.n_levels)
        ok = self._ops.tensor(self._allowed(p, self._bans(exclusion, len(p), rows)))
        if ok.shape[1] < self.k_max:
            ok = torch.nn.functional.pad(ok, (0, self.k_max - ok.shape[1]))
        return ok

    def _allowed(self, prefixes, bans: "_Bans | None", pairs: bool = False):
        """(B, W_d) bool for (B, d) prefixes (no padding to K_max), in the table's array kind;
        with ``pairs``, a step whose children are listed rather than bit-masked may instead
        return (rows, codes) of the allowed entries (few per row: cheaper to apply)."""
        ops = self._ops
        d = prefixes.shape[1]
        if bans is not None and not len(bans.per_depth[d + 1][0]):
            bans = None  # no node of the next depth is wholly banned
        node = self._nodes(prefixes)
        live = node >= 0
        w = self.widths[d]
        key = self._key[d]
        safe = ops.low(node, 0)
        base = safe * w
        bits = self._bits[d]
        if bits is not None:  # one gather of packed bits
            ok = ops.unpack(bits[safe], w)
            ok &= live[:, None]
            if bans is not None:  # child index = the node's first child + rank among its codes
                child = ops.searchsorted(key, base)[:, None] + ok.cumsum(1) - 1
                ok &= ~bans.banned(ops.where(ok, child, -1), d + 1, None)
            return ok
        # the children of a node are the run of key[d] in [node * w, node * w + w)
        lo = ops.searchsorted(key, base)
        lens = ops.where(live, ops.searchsorted(key, base + w) - lo, 0)
        b = len(node)
        if ops.ragged:  # only the children that exist (a host-side length)
            row = ops.repeat(ops.arange(b), lens)
            idx = ops.arange(len(row)) - (lens.cumsum(0) - lens)[row] + lo[row]
            code = ops.int64(key[idx]) - base[row]
            if bans is not None:
                keep = ~bans.banned(idx[None], d + 1, row)[0]
                row, code = row[keep], code[keep]
            if pairs:
                return row, code
            ok = ops.zeros_bool((b, w))
            ok[row, code] = True
            return ok
        ok = ops.zeros_bool((b, w + 1))
        # padded to the most children of any node: no host sync
        idx = lo[:, None] + ops.arange(self._kids[d])
        valid = idx < (lo + lens)[:, None]
        code = ops.int64(key[ops.high(idx, len(key) - 1)]) - base[:, None]
        if bans is not None:
            valid &= ~bans.banned(idx, d + 1, None)
        ok[ops.arange(b)[:, None], ops.where(valid, code, w)] = True
        return ok[:, :w]

    def _bans(self, exclusion, n_rows: int, rows) -> "_Bans | None":
        if exclusion is None:
            return None
        if isinstance(exclusion, Exclusion):
            return _Bans.of(self, [exclusion], np.zeros(n_rows, dtype=np.int64))
        if rows is None:
            rows = np.arange(n_rows)
        elif isinstance(rows, torch.Tensor):
            rows = rows.detach().cpu().numpy()
        rows = np.asarray(rows, dtype=np.int64)
        if rows.shape != (n_rows,) or (n_rows and not 0 <= rows.min() <= rows.max() <
                                       len(exclusion)):
            raise ConfigError(f"rows must give each of the {n_rows} prefixes a request in "
                              f"0..{len(exclusion) - 1}")
        return _Bans.of(self, list(exclusion), rows)

    def resolve(self, full_ids, index: "SemanticIdIndex | None" = None) -> list[str | None]:
        """The item key of each (B, L + 1) full ID (codes then suffix; SemanticIds accepted);
        None where the ID was never issued.

        Without ``index``: from the keys the table holds (its snapshot). With ``index``: the
        table is first checked to be of the index's active version (:meth:`check`), then the IDs
        are resolved through the index (:meth:`SemanticIdIndex.keys_of`, one batched read), so
        an item removed since the snapshot gives None; this works without held keys too."""
        if index is not None:
            self.check(index)
            rows = self._prefix_array(self._id_rows(full_ids), self.n_levels + 1)
            return index.keys_of(self._ops.numpy(rows).tolist(), version=self.version)
        if self.keys is None:
            raise ConfigError("this decoding table holds no item keys: build it with "
                              "keys=True, or resolve through the index (index=)")
        rows = self.rows_of(full_ids)
        return [None if r < 0 else self.keys[r] for r in rows.tolist()]

    @staticmethod
    def _id_rows(full_ids):
        if isinstance(full_ids, SemanticId):
            return [[*full_ids.levels, full_ids.suffix]]
        if isinstance(full_ids, (list, tuple)) and full_ids and \
                isinstance(full_ids[0], SemanticId):
            return [[*s.levels, s.suffix] for s in full_ids]
        return full_ids

    def rows_of(self, full_ids) -> torch.Tensor:
        """(B,) the row (0..N-1, in ID order) of each full ID; -1 where not issued."""
        t = self._prefix_array(self._id_rows(full_ids), self.n_levels + 1)
        if t.shape[1] != self.n_levels + 1:
            raise InvalidCodesError(f"full IDs have {self.n_levels} codes and a suffix, got "
                                    f"rows of {t.shape[1]}")
        return self._ops.tensor(self._nodes(t))

    def exclusion(self, items: Iterable[Any] = (), prefixes: Iterable[Sequence[int]] = ()
                  ) -> Exclusion:
        """Bans for one request, applied by :meth:`allowed` and the processors without touching
        the table.

        items : item keys (str, needs keys held), :class:`SemanticId` or (L + 1)-int ID rows;
            items that are not in the table are counted in ``n_unknown`` and ignored.
        prefixes : code tuples of depth 1..L: every item under them is banned.
        """
        starts: list[int] = []
        ends: list[int] = []
        unknown = 0
        ids: list[list[int]] = []
        for item in items:
            if isinstance(item, str):
                row = self._row_of_key(item)
                if row < 0:
                    unknown += 1
                else:
                    starts.append(row)
                    ends.append(row + 1)
            elif isinstance(item, SemanticId):
                ids.append([*item.levels, item.suffix])
            else:
                ids.append([int(v) for v in item])
        if ids:
            rows = self.rows_of(ids).cpu().numpy()
            unknown += int((rows < 0).sum())
            starts += rows[rows >= 0].tolist()
            ends += (rows[rows >= 0] + 1).tolist()
        by_depth: dict[int, list[list[int]]] = {}
        for p in prefixes:
            p = [int(v) for v in p]
            if not 1 <= len(p) <= self.n_levels:
                raise InvalidCodesError(f"a banned prefix has 1..{self.n_levels} codes, got {p}")
            by_depth.setdefault(len(p), []).append(p)
        for depth, ps in by_depth.items():
            node = self._ops.numpy(self._nodes(self._prefix_array(ps, self.n_levels)))
            hit = self._ops.asarray(node[node >= 0])
            unknown += int((node < 0).sum())
            starts += self._ops.numpy(self._first_rows(hit, depth)).tolist()
            ends += self._ops.numpy(self._first_rows(hit + 1, depth)).tolist()
        return Exclusion(self._snapshot, np.asarray(starts, dtype=np.int64),
                         np.asarray(ends, dtype=np.int64), unknown)

    def _row_of_key(self, key: str) -> int:
        if self.keys is None:
            raise ConfigError("this decoding table holds no item keys: ban items by ID, or "
                              "build it with keys=True")
        if self._key_rows is None:
            self._key_rows = {k: i for i, k in enumerate(self.keys)}
        return self._key_rows.get(key, -1)


class _Bans:
    """Exclusions of several requests, as banned node ranges per depth.

    A node is banned when every item under it is; its items are a contiguous run of rows and
    the banned rows are merged ranges, so that happens exactly when one range covers the node's
    run. For each range and depth that is one interval of nodes, found from the ancestors of
    the range's first and last rows (a node's parent is ``key // W``). Request r's intervals at
    depth t are shifted by r * (M_t + 1), so one searchsorted serves the whole batch.
    """

    def __init__(self, per_depth: dict, rows, ops: "_Ops"):
        self.per_depth = per_depth  # depth t -> (starts, ends, span): shifted and sorted
        self.row_request = rows  # (B,) request of each batch row
        self.ops = ops

    @classmethod
    def of(cls, table: DecodingTable, exclusions: list, rows: np.ndarray) -> "_Bans | None":
        los, his, req = [], [], []
        for request, ex in enumerate(exclusions):
            if ex is None:
                continue
            if not isinstance(ex, Exclusion):
                raise ConfigError(f"exclusions must be Exclusion objects or None, got "
                                  f"{type(ex).__name__}")
            if ex._table_id != table._snapshot:
                raise ConfigError("an Exclusion made by another decoding table, or by this one "
                                  "before table.refresh(): make it again with this table's "
                                  "exclusion()")
            los.append(ex.starts)
            his.append(ex.ends)
            req.append(np.full(len(ex.starts), request, dtype=np.int64))
        if not los or not sum(len(x) for x in los):
            return None
        a, b, r = np.concatenate(los), np.concatenate(his), np.concatenate(req)
        n, depth_max = table.n_items, table.n_levels + 1
        # ancestors at every depth of rows a - 1, a, b - 1, b (clipped; fixed up below)
        probe = np.stack([np.maximum(a - 1, 0), a, b - 1, np.minimum(b, n - 1)])
        per_depth = {}
        node = probe
        for t in range(depth_max, 0, -1):
            if t < depth_max:  # parents of the depth t + 1 nodes
                node = table._np_key[t][node].astype(np.int64) // table.widths[t]
            before, first, last, after = node
            starts = np.where((a == 0) | (before != first), first, first + 1)
            ends = np.where((b == n) | (after != last), last + 1, last)
            keep = starts < ends
            span = table.node_counts[t] + 1
            s_t, e_t = starts[keep] + r[keep] * span, ends[keep] + r[keep] * span
            order = np.argsort(s_t, kind="stable")
            per_depth[t] = (table._ops.asarray(s_t[order]), table._ops.asarray(e_t[order]), span)
        return cls(per_depth, table._ops.asarray(rows), table._ops)

    def for_rows(self, requests: np.ndarray) -> "_Bans":
        """The same bans for batch rows whose requests are ``requests`` (B,)."""
        return _Bans(self.per_depth, self.ops.asarray(np.asarray(requests, dtype=np.int64)),
                     self.ops)

    def banned(self, nodes: torch.Tensor, depth: int, rows: torch.Tensor | None
               ) -> torch.Tensor:
        """True where the node of ``depth`` has every item banned for its batch row's request
        (nodes < 0 give False). nodes : (B, W), row b's in row b; or (1, n) with ``rows`` (n,)
        the batch row of each."""
        starts, ends, span = self.per_depth[depth]
        shift = self.row_request * span
        x = nodes + (shift[:, None] if rows is None else shift[rows][None])
        i = self.ops.searchsorted(starts, x, right=True) - 1
        return (i >= 0) & (x < ends[self.ops.low(i, 0)]) & (nodes >= 0)


@dataclass(frozen=True)
class TokenLayout:
    """Where each position's codes sit in a model's vocabulary.

    offsets : L + 1 vocabulary ids of code 0 at each position (levels, then the suffix);
    widths : L + 1 codes per position (the suffix's: how many suffix tokens the model has);
    eos_id : the end token, forced once an ID is complete.
    Code c at position p is token ``offsets[p] + c``.
    """

    offsets: tuple[int, ...]
    widths: tuple[int, ...]
    eos_id: int

    def __post_init__(self):
        offsets, widths = tuple(map(int, self.offsets)), tuple(map(int, self.widths))
        if len(offsets) != len(widths) or len(offsets) < 2 or min(widths) < 1 or \
                min(offsets) < 0 or int(self.eos_id) < 0:
            raise ConfigError(f"a token layout needs one non-negative offset and one positive "
                              f"width per position (at least 2) and an end token, got offsets "
                              f"{offsets}, widths {widths}, eos_id {self.eos_id}")
        spans = sorted((o, o + w) for o, w in zip(offsets, widths))
        for (a0, a1), (b0, _) in zip(spans, spans[1:]):
            if b0 < a1:
                raise ConfigError(f"token ranges of two positions overlap: {spans}")
        if any(o <= self.eos_id < o + w for o, w in zip(offsets, widths)):
            raise ConfigError(f"eos_id {self.eos_id} lies inside a position's token range")
        object.__setattr__(self, "offsets", offsets)
        object.__setattr__(self, "widths", widths)
        object.__setattr__(self, "eos_id", int(self.eos_id))

    @classmethod
    def contiguous(cls, table: DecodingTable, start: int, eos_id: int, *,
                   n_suffix: int | None = None) -> "TokenLayout":
        """Every position's codes one after the other from vocabulary id ``start``."""
        widths = table._layout_widths(n_suffix)
        offsets = np.r_[0, np.cumsum(widths)[:-1]] + int(start)
        return cls(tuple(offsets.tolist()), widths, eos_id)

    @classmethod
    def for_tokenizer(cls, tokenizer, table: DecodingTable, *, n_suffix: int | None = None,
                      eos_id: int | None = None) -> "TokenLayout":
        """Add the table's tokens (``<a_0>`` ...: :meth:`DecodingTable.vocabulary`) to a Hugging
        Face tokenizer with ``tokenizer.add_tokens`` (those it has already are kept), and the
        layout that maps codes to them. Resize the model's embeddings to ``len(tokenizer)``
        afterwards. ``eos_id`` defaults to the tokenizer's."""
        widths = table._layout_widths(n_suffix)
        tokenizer.add_tokens(token_vocabulary(widths))
        eos = tokenizer.eos_token_id if eos_id is None else eos_id
        if eos is None:
            raise ConfigError("the tokenizer has no eos_token_id: pass eos_id")
        offsets = []
        for head, w in zip(token_heads(len(widths)), widths):
            ids = tokenizer.convert_tokens_to_ids([f"{head}{c}>" for c in range(w)])
            if list(ids) != list(range(ids[0], ids[0] + w)):
                raise ConfigError(f"the tokenizer's {head}*> tokens are not consecutive ids "
                                  "(some existed before with other ids): use a tokenizer "
                                  "without them, or TokenLayout(offsets=...) with your own ids")
            offsets.append(int(ids[0]))
        return cls(tuple(offsets), widths, eos)

    @property
    def n_positions(self) -> int:
        return len(self.offsets)

    def to_tokens(self, ids) -> torch.Tensor:
        """(B, t) codes of positions 0..t-1 -> vocabulary ids (SemanticIds accepted)."""
        if isinstance(ids, SemanticId):
            ids = [ids]
        if isinstance(ids, (list, tuple)) and ids and isinstance(ids[0], SemanticId):
            ids = [[*s.levels, s.suffix] for s in ids]
        t = torch.as_tensor(ids if isinstance(ids, torch.Tensor) else np.asarray(ids)).long()
        if t.dim() != 2 or t.shape[1] > self.n_positions:
            raise InvalidCodesError(f"IDs must be (B, t) codes with t <= {self.n_positions}, "
                                    f"got shape {tuple(t.shape)}")
        widths = torch.tensor(self.widths[:t.shape[1]])
        if ((t < 0) | (t >= widths)).any():
            raise InvalidCodesError(f"codes out of the layout's range (widths {self.widths})")
        return t + torch.tensor(self.offsets[:t.shape[1]], device=t.device)

    def to_codes(self, tokens) -> torch.Tensor:
        """(B, t) vocabulary ids of positions 0..t-1 -> codes; -1 where a token is not a code
        of its position."""
        t = torch.as_tensor(tokens).long()
        if t.dim() == 1:
            t = t[None]
        t = t[:, :self.n_positions]
        off = torch.tensor(self.offsets[:t.shape[1]], device=t.device)
        wid = torch.tensor(self.widths[:t.shape[1]], device=t.device)
        c = t - off
        return torch.where((c >= 0) & (c < wid), c, -1)


class _Stepper:
    """What both processors share: the table, the layout, the request bans, the counters."""

    def __init__(self, table: DecodingTable, layout: TokenLayout, prompt_length: int,
                 num_beams: int, exclusions, index):
        if not isinstance(table, DecodingTable):
            raise ConfigError(f"table must be a DecodingTable, got {type(table).__name__}")
        if layout.n_positions != table.n_levels + 1:
            raise ConfigError(f"the layout has {layout.n_positions} positions, the table's IDs "
                              f"{table.n_levels + 1}")
        short = [p for p in range(table.n_levels) if layout.widths[p] < table.widths[p]]
        if short:
            raise ConfigError(f"the layout has fewer tokens than codes at level(s) "
                              f"{[p + 1 for p in short]}: widths {layout.widths} for "
                              f"{table.widths}")
        for name, v, lo in (("prompt_length", prompt_length, 0), ("num_beams", num_beams, 1)):
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ConfigError(f"{name} must be an int >= {lo}, got {v!r}")
        if index is not None:
            table.check(index)
        self.table, self.layout = table, layout
        self.prompt_length, self.num_beams = prompt_length, num_beams
        self.exclusions = exclusions
        # suffixes the model has no token for cannot be generated: count them once
        self.n_unreachable = _count_suffix_at_least(table, layout.widths[-1]) \
            if layout.widths[-1] < table.widths[-1] else 0
        self._forced = torch.zeros((), dtype=torch.int64, device=table.device)
        self._offsets = table._ops.asarray(np.array(layout.offsets, dtype=np.int64))
        self._widths = table._ops.asarray(np.array(layout.widths, dtype=np.int64))
        self._bans_cache: tuple[int, Any, int, dict] | None = None

    @property
    def n_forced_end(self) -> int:
        """Beams whose allowed set was empty (all banned, or a malformed prefix): the end token
        was forced on them, never an unconstrained step."""
        return int(self._forced)

    def _bans_for(self, requests: np.ndarray) -> "_Bans | None":
        """The bans of the batch rows whose requests are ``requests`` (B,): built once per table
        state for all requests, then viewed per row layout (cached by the layout)."""
        ex = self.exclusions
        if ex is None:
            return None
        snap = self.table._snapshot
        if self._bans_cache is None or self._bans_cache[0] != snap:
            exs = [ex] if isinstance(ex, Exclusion) else list(ex)
            self._bans_cache = (snap, _Bans.of(self.table, exs, np.arange(len(exs))), len(exs),
                                {})
        _, bans, n_requests, views = self._bans_cache
        if bans is None:
            return None
        if isinstance(ex, Exclusion):
            requests = np.zeros(len(requests), dtype=np.int64)
        elif len(requests) and requests.max() >= n_requests:
            raise ConfigError(f"{n_requests} exclusions for {len(requests)} rows of "
                              f"{self.num_beams} beams: give one per request")
        key = requests.tobytes()
        if key not in views:
            views.clear()  # one layout at a time: a generate call keeps its batch shape
            views[key] = bans.for_rows(requests)
        return views[key]

    def step(self, generated: torch.Tensor, requests: np.ndarray | None = None
             ) -> tuple[Any, int]:
        """The allowed codes of the next position after the (B, t) generated tokens, and the
        position t: None once the ID is complete; else a (B, W) bool array of the table's kind,
        or on CPU (rows, codes) of the allowed entries. ``requests`` (B,): each row's request
        (default: row // num_beams)."""
        t = generated.shape[1]
        if t > self.table.n_levels:
            return None, t
        table = self.table
        ops = table._ops
        tokens = ops.int64(ops.asarray(generated.cpu().numpy() if table.device.type == "cpu"
                                       else generated.to(table.device)))
        codes = tokens - self._offsets[:t]
        codes = ops.where((codes >= 0) & (codes < self._widths[:t]), codes, -1)
        if requests is None:
            requests = np.arange(len(codes)) // self.num_beams
        ok = table._allowed(codes, self._bans_for(requests), pairs=True)
        w = self.layout.widths[t]
        if isinstance(ok, tuple):  # (rows, codes): numpy only
            row, code = ok
            keep = code < w
            return (row[keep], code[keep]), t
        if ok.shape[1] > w:
            ok = ok[:, :w]
        return ok, t

    def dense(self, ok, n_rows: int) -> torch.Tensor:
        """step()'s result as a (B, W) bool tensor."""
        if isinstance(ok, tuple):
            row, code = ok
            out = np.zeros((n_rows, int(code.max()) + 1 if len(code) else 0), dtype=bool)
            out[row, code] = True
            return torch.from_numpy(out)
        return self.table._ops.tensor(ok)


def _count_suffix_at_least(table: DecodingTable, s: int) -> int:
    key = table._np_key[table.n_levels]
    return int(((key.astype(np.int64) % table.widths[-1]) >= s).sum())


class SemanticIdLogitsProcessor(_ProcessorBase):
    """A ``transformers`` logits processor that lets ``generate`` spell only issued IDs.

    Put it in ``logits_processor=LogitsProcessorList([...])``. After ``prompt_length`` tokens
    (the prompt's padded length), position t of the ID may only take the codes the table allows
    after the t codes generated so far (minus the request's bans); once the L + 1 tokens are out,
    only ``layout.eos_id``. A beam with nothing allowed (every item under it banned, or tokens
    that are not codes) gets only the end token, with the model's own score for it, and is
    counted in :attr:`n_forced_end`: never an unconstrained step. All beams are masked in one
    batched pass.

    exclusions : one :class:`Exclusion` for the whole batch, or one per request (input row);
    num_beams : beams per request, to map beam rows to requests.
    index : if given, the table is checked to be of its active version.
    """

    def __init__(self, table: DecodingTable, layout: TokenLayout, *, prompt_length: int,
                 num_beams: int = 1,
                 exclusions: "Exclusion | Sequence[Exclusion | None] | None" = None,
                 index: "SemanticIdIndex | None" = None):
        self._s = _Stepper(table, layout, prompt_length, num_beams, exclusions, index)

    @property
    def n_forced_end(self) -> int:
        return self._s.n_forced_end

    @property
    def n_unreachable(self) -> int:
        """Items whose suffix has no token in the layout (they cannot be generated)."""
        return self._s.n_unreachable

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        s = self._s
        layout = s.layout
        if input_ids.shape[1] < s.prompt_length:
            raise ConfigError(f"input of {input_ids.shape[1]} tokens is shorter than "
                              f"prompt_length={s.prompt_length}")
        ok, t = s.step(input_ids[:, s.prompt_length:])
        eos = layout.eos_id
        if ok is not None and scores.device.type == "cpu" and \
                scores.dtype in (torch.float32, torch.float64) and not scores.requires_grad:
            return self._numpy_step(ok.cpu().numpy() if isinstance(ok, torch.Tensor) else ok,
                                    t, scores)
        out = torch.full_like(scores, float("-inf"))
        if ok is None:  # the ID is complete: end it
            out[:, eos] = scores[:, eos]
            return out
        ok = s.dense(ok, len(scores)).to(scores.device)
        lo, w = layout.offsets[t], ok.shape[1]
        out[:, lo:lo + w] = torch.where(ok, scores[:, lo:lo + w], out[:, lo:lo + w])
        empty = ~ok.any(dim=1)
        own = scores[:, eos]
        own = torch.where(torch.isfinite(own), own, torch.finfo(scores.dtype).min)
        out[:, eos] = torch.where(empty, own, out[:, eos])
        s._forced += empty.sum().to(s._forced.device)
        return out

    def _numpy_step(self, ok, t: int, scores: torch.Tensor) -> torch.Tensor:
        """The same masking in numpy (CPU scores; a fraction of torch's per-call overhead)."""
        sc = scores.numpy()
        result = torch.full_like(scores, float("-inf"))  # torch's fill: ~2.5x numpy's here
        out = result.numpy()
        lo = self._s.layout.offsets[t]
        if isinstance(ok, tuple):  # few allowed entries per row: copy just those
            row, code = ok
            out[row, code + lo] = sc[row, code + lo]
            empty = np.bincount(row, minlength=len(sc)) == 0
        else:
            w = ok.shape[1]
            share = np.count_nonzero(ok) / max(ok.size, 1)
            if 0.1 < share < 0.9:  # a masked copy mispredicts its branches: add 0 / -inf
                np.add(sc[:, lo:lo + w], _PENALTY[sc.dtype.char][ok.view(np.uint8)],
                       out=out[:, lo:lo + w])
            else:
                np.copyto(out[:, lo:lo + w], sc[:, lo:lo + w], where=ok)
            empty = ~ok.any(axis=1)
        if empty.any():
            eos = self._s.layout.eos_id
            own = sc[empty, eos]
            out[empty, eos] = np.where(np.isfinite(own), own, np.finfo(sc.dtype).min)
            self._s._forced += int(empty.sum())
        return result


class PrefixAllowedTokens:
    """A ``prefix_allowed_tokens_fn`` for ``generate``: ``fn(batch_id, input_ids) -> token ids``.

    The same rules as :class:`SemanticIdLogitsProcessor` (which masks all beams at once and is
    the faster choice); ``transformers`` calls this once per beam. Never returns an empty list: a
    beam with nothing allowed gets ``[eos_id]``, counted in :attr:`n_forced_end`.
    ``exclusions`` are per request (``batch_id``), or one for all.
    """

    def __init__(self, table: DecodingTable, layout: TokenLayout, *, prompt_length: int,
                 exclusions: "Exclusion | Sequence[Exclusion | None] | None" = None,
                 index: "SemanticIdIndex | None" = None):
        self._s = _Stepper(table, layout, prompt_length, 1, exclusions, index)

    @property
    def n_forced_end(self) -> int:
        return self._s.n_forced_end

    def __call__(self, batch_id: int, input_ids: torch.Tensor) -> list[int]:
        s = self._s
        ok, t = s.step(input_ids[None, s.prompt_length:], np.array([batch_id]))
        if ok is None:
            return [s.layout.eos_id]
        codes = torch.nonzero(s.dense(ok, 1)[0]).flatten()
        if codes.numel() == 0:
            s._forced += 1
            return [s.layout.eos_id]
        return (codes + s.layout.offsets[t]).tolist()


def _id_array(ids) -> np.ndarray:
    if isinstance(ids, torch.Tensor):
        ids = ids.detach().cpu().numpy()
    a = np.asarray(ids)
    if a.ndim != 2 or a.shape[1] < 2:
        raise InvalidCodesError(f"IDs must be an (N, L + 1) array of codes and a suffix, got "
                                f"shape {a.shape}")
    if len(a) == 0:
        raise EmptyInputError("no IDs to build a decoding table from")
    if a.dtype.kind not in "iu":
        if a.dtype.kind == "f" and np.isfinite(a).all() and (a == np.round(a)).all():
            a = a.astype(np.int64)
        else:
            raise InvalidCodesError(f"IDs must be integers, got {a.dtype}")
    if a.min() < 0:
        raise InvalidCodesError(f"IDs must be non-negative, got {int(a.min())}")
    return a.astype(np.int64, copy=False)

