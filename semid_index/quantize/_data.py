"""Input handling: validation and streaming sources of embedding rows.

A *source* hands ``fit`` / ``encode`` float32 CPU tensors of shape (rows, D), validated (finite,
right width), in storage order or shuffled, and draws uniform samples. Three kinds exist:

* in-memory arrays (``torch.Tensor`` or ``numpy.ndarray``), read by row slices;
* files on disk: a top-level ``numpy.memmap`` (e.g. ``np.load(path, mmap_mode="r")``) is read with
  plain file reads (``pread``), so the pages of a file larger than RAM never pile up in the
  process' resident set;
* re-iterable collections of batches (a list, a ``DataLoader``, or a zero-argument callable that
  returns a fresh iterator), read in the order they come.
"""

from __future__ import annotations

import mmap
import os
import warnings
from typing import Callable, Iterable, Iterator, TypeGuard

import numpy as np
import torch

from .._inputs import MAX_NORM, load_npy
from ..errors import ConfigError, DimensionMismatchError, EmptyInputError, NonFiniteError

DEFAULT_CHUNK_BYTES = 64 << 20  # rows read at once from a source; bounds streaming memory
MIX_BLOCKS = 16  # random blocks mixed into one shuffled chunk


def tensor_view(a: np.ndarray) -> torch.Tensor:
    """``torch.from_numpy`` without its warning for read-only arrays (a memory-mapped file, a
    caller's frozen array): the kernels only read their input, never write to it."""
    if a.flags.writeable:
        return torch.from_numpy(a)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a)


def as_float_tensor(x, *, name: str = "embeddings") -> torch.Tensor:
    """Convert one batch (tensor, ndarray or nested list) to a 2-D float32 CPU/GPU tensor.

    No copy is made when ``x`` already is a contiguous float32 tensor.
    """
    if isinstance(x, torch.Tensor):
        t = x
    elif isinstance(x, np.ndarray):
        if x.dtype.kind not in "fiub":
            raise ConfigError(f"{name} must be numeric, got dtype {x.dtype}")
        t = tensor_view(np.ascontiguousarray(x, dtype=np.float32))
    else:
        try:
            t = torch.as_tensor(np.asarray(x, dtype=np.float32))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{name} must be a tensor, an array or a list of rows: {exc}") from None
    if t.dtype.is_complex or t.dtype == torch.bool:
        raise ConfigError(f"{name} must be real-valued, got dtype {t.dtype}")
    if t.ndim != 2:
        raise DimensionMismatchError(f"{name} must be 2-D (rows, dim), got shape {tuple(t.shape)}")
    if t.dtype != torch.float32:
        t = t.to(torch.float32)
    return t.contiguous()


def _row_ok(t: torch.Tensor) -> torch.Tensor:
    """Which rows of t (rows, D) :func:`check_batch` accepts: (rows,) bool."""
    return torch.linalg.vector_norm(t, dim=1) <= MAX_NORM  # NaN/inf propagate; huge rows overflow


def rows_ok(t: torch.Tensor) -> bool:
    """Whether :func:`check_batch` accepts every row of t (the cheap test, without the error)."""
    return bool(_row_ok(t).all())


def check_batch(t: torch.Tensor, dim: int | None, *, row_offset: int = 0, name: str = "embeddings",
                expected_from: str = "the model was trained with",
                row_ids: np.ndarray | None = None) -> None:
    """Raise a typed error if ``t`` (rows, D) has the wrong width or holds NaN/inf.

    Rows are reported as ``row_offset + i``, or ``row_ids[i]`` when the rows were gathered.
    """
    if dim is not None and t.shape[1] != dim:
        raise DimensionMismatchError(
            f"{name} have dim={t.shape[1]} but {expected_from} dim={dim}")
    if not t.numel():
        return
    ok = _row_ok(t)
    if bool(ok.all()):
        return
    bad_rows = (~ok).nonzero()[:, 0].cpu().numpy()
    rows = row_ids[bad_rows] if row_ids is not None else bad_rows + row_offset
    first = int(np.argmin(rows))
    r = int(bad_rows[first])
    cols = (~torch.isfinite(t[r])).nonzero()[:, 0]
    if cols.numel():
        raise NonFiniteError(
            f"{name} contain non-finite values (NaN/inf) in {len(bad_rows)} row(s); first at "
            f"row {int(rows[first])}, column {int(cols[0])}", row=int(rows[first]),
            column=int(cols[0]))
    raise NonFiniteError(
        f"{name}: row {int(rows[first])} is too large (norm above {MAX_NORM:g}): its squared "
        "distances overflow float32 arithmetic; scale the embeddings down",
        row=int(rows[first]))


class Source:
    """Base class: a validated stream of (rows, D) float32 CPU tensors.

    ``checked`` is True once every row is known to be finite (after a full pass, or from the
    start for input validated by :func:`validated`); then no chunk is scanned again."""

    dim: int | None
    n_rows: int | None
    checked: bool = False
    name: str = "embeddings"  #: what error messages call the rows

    def chunks(self, rows: int, generator: torch.Generator | None = None,
               copy: bool = True, check: bool = True) -> Iterator[torch.Tensor]:
        """Yield chunks of at most ``rows`` rows; shuffled when ``generator`` is given.

        Chunks are fresh copies the caller may overwrite, unless ``copy=False``: then they may be
        read-only views of the caller's data. With ``check=False`` such views may come back
        unscanned for NaN/inf: the caller then checks every chunk itself (with
        :func:`check_batch`, or a cheaper test that falls back to it), and the source does not
        count as checked afterwards.
        """
        raise NotImplementedError

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``min(n, n_rows)`` distinct rows drawn uniformly at random, in random order: (n, D).

        Any prefix of the result is itself a uniform sample.
        """
        assert self.n_rows is not None  # sources of unknown length override sample()
        n = min(n, self.n_rows)
        perm = torch.randperm(self.n_rows, generator=generator)[:n]
        if n == self.n_rows:
            return self.materialize()[perm]
        order = perm.sort()
        rows = self._take(order.values.numpy())  # sorted reads, then back to random order
        return rows[torch.argsort(order.indices)]

    def _take(self, idx: np.ndarray) -> torch.Tensor:
        raise NotImplementedError

    def materialize(self) -> torch.Tensor:
        """Return all rows as one contiguous float32 tensor (a copy the caller may modify)."""
        raise NotImplementedError


class ArraySource(Source):
    """Rows held in memory (a tensor, an ndarray, or a memmap read by slicing)."""

    dim: int
    n_rows: int

    def __init__(self, data, name: str = "embeddings"):
        if isinstance(data, torch.Tensor):
            if data.ndim != 2:
                raise DimensionMismatchError(
                    f"{name} must be 2-D (rows, dim), got shape {tuple(data.shape)}")
            if data.dtype.is_complex or data.dtype == torch.bool:
                raise ConfigError(f"{name} must be real-valued, got dtype {data.dtype}")
        else:
            data = np.asarray(data) if not isinstance(data, np.ndarray) else data
            if data.ndim != 2:
                raise DimensionMismatchError(
                    f"{name} must be 2-D (rows, dim), got shape {tuple(data.shape)}")
            if data.dtype.kind not in "fiu":
                raise ConfigError(f"{name} must be numeric, got dtype {data.dtype}")
        self.data = data
        self.n_rows, self.dim = int(data.shape[0]), int(data.shape[1])
        self.name = name
        self.checked = False

    def _rows(self, a: int, b: int) -> torch.Tensor:
        part = self.data[a:b]
        if isinstance(part, torch.Tensor):
            t = part.detach().to("cpu", torch.float32, copy=True)  # callers overwrite chunks
        else:
            t = torch.from_numpy(np.array(part, dtype=np.float32, order="C", copy=True))
        if not self.checked:
            check_batch(t, None, row_offset=a, name=self.name)
        return t.contiguous()

    def chunks(self, rows, generator=None, copy=True, check=True):
        if generator is None:
            for a in range(0, self.n_rows, rows):
                b = min(a + rows, self.n_rows)
                yield self._rows(a, b) if copy else self._view(a, b, check)
            self.checked = self.checked or check
            return
        # Shuffled: each chunk gathers MIX_BLOCKS blocks from random places and shuffles their
        # rows, so data stored sorted (by category, by date) still gives mixed mini-batches while
        # reads stay sequential within a block.
        block = max(1, rows // MIX_BLOCKS)
        block_starts = torch.arange(0, self.n_rows, block)
        starts = block_starts[torch.randperm(len(block_starts), generator=generator)].tolist()
        for g in range(0, len(starts), MIX_BLOCKS):
            t = torch.cat([self._rows(a, min(a + block, self.n_rows))
                           for a in starts[g:g + MIX_BLOCKS]])
            yield t[torch.randperm(t.shape[0], generator=generator)]

    def _view(self, a: int, b: int, check: bool = True) -> torch.Tensor:
        """Rows a..b without a copy when the data already is C-contiguous float32 on the CPU
        (scanned for NaN/inf unless ``check`` is False)."""
        part = self.data[a:b]
        if isinstance(part, torch.Tensor):
            ok = part.dtype == torch.float32 and part.device.type == "cpu" and part.is_contiguous()
            t = part.detach() if ok else None
        else:
            ok = part.dtype == np.float32 and part.flags.c_contiguous and \
                not isinstance(self.data, np.memmap)
            t = tensor_view(part) if ok else None
        if t is None:
            return self._rows(a, b)
        if check and not self.checked:
            check_batch(t, None, row_offset=a, name=self.name)
        return t

    def _take(self, idx):
        if isinstance(self.data, torch.Tensor):
            t = self.data[torch.from_numpy(idx)].detach().to("cpu", torch.float32)
        else:
            t = torch.from_numpy(np.asarray(self.data[idx], dtype=np.float32))
        if not self.checked:
            check_batch(t, None, name=self.name, row_ids=idx)
        return t.contiguous()

    def materialize(self):
        out = torch.empty(self.n_rows, self.dim, dtype=torch.float32)
        step = max(1, DEFAULT_CHUNK_BYTES // (4 * self.dim))
        direct = type(self)._rows is ArraySource._rows  # in memory: convert straight into out
        for a in range(0, self.n_rows, step):
            b = min(a + step, self.n_rows)
            dst = out[a:b]
            if not direct:
                dst.copy_(self._rows(a, b))
                continue
            part = self.data[a:b]
            if isinstance(part, torch.Tensor):
                dst.copy_(part.detach())
            else:  # one pass, no temporary chunk (as np.array(part, dtype=float32) casts)
                np.copyto(dst.numpy(), part, casting="unsafe")
            if not self.checked:
                check_batch(dst, None, row_offset=a, name=self.name)
        self.checked = True
        return out


class FileSource(ArraySource):
    """A top-level, C-ordered ``numpy.memmap`` read with ``pread`` instead of through the mapping.

    Reading through the mapping would leave every touched page resident in this process; plain
    reads keep the resident set at one chunk whatever the file size.
    """

    def __init__(self, data: np.memmap, name: str = "embeddings"):
        super().__init__(data, name)
        assert data.filename is not None  # usable() checked it
        self.path: str = data.filename
        self.offset = int(data.offset)
        self.itemsize = data.dtype.itemsize
        self.row_bytes = self.dim * self.itemsize
        self.dtype = data.dtype.newbyteorder("=") if data.dtype.byteorder not in "=|" else data.dtype
        self.file_dtype = data.dtype

    @staticmethod
    def usable(data) -> TypeGuard[np.memmap]:
        return (isinstance(data, np.memmap) and isinstance(data.base, mmap.mmap)
                and data.filename is not None and data.ndim == 2 and data.flags.c_contiguous
                and data.dtype.kind == "f" and os.path.exists(data.filename))

    def _read(self, fd: int, a: int, b: int) -> np.ndarray:
        nbytes = (b - a) * self.row_bytes
        buf = os.pread(fd, nbytes, self.offset + a * self.row_bytes)
        if len(buf) != nbytes:
            raise EmptyInputError(f"{self.path} ended early: wanted rows {a}..{b}")
        return np.frombuffer(buf, dtype=self.file_dtype).reshape(b - a, self.dim)

    def _rows(self, a, b):
        fd = os.open(self.path, os.O_RDONLY)
        try:
            arr = self._read(fd, a, b)
        finally:
            os.close(fd)
        t = torch.from_numpy(arr.astype(np.float32, copy=True))
        if not self.checked:
            check_batch(t, None, row_offset=a, name=self.name)
        return t

    def _take(self, idx):
        out = np.empty((len(idx), self.dim), dtype=np.float32)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            # coalesce runs of consecutive indices into single reads
            breaks = np.flatnonzero(np.diff(idx) != 1) + 1
            pos = 0
            for run in np.split(idx, breaks):
                a, b = int(run[0]), int(run[-1]) + 1
                out[pos:pos + b - a] = self._read(fd, a, b)
                pos += b - a
        finally:
            os.close(fd)
        t = torch.from_numpy(out)
        if not self.checked:
            check_batch(t, None, name=self.name, row_ids=idx)
        return t


class IterableSource(Source):
    """A re-iterable collection of batches, read in the order it yields them.

    ``n_rows`` is unknown until the first full pass.
    """

    def __init__(self, batches, name: str = "embeddings"):
        if callable(batches) and not hasattr(batches, "__iter__"):
            self.factory: Callable[[], Iterable] = batches
        elif iter(batches) is batches:
            raise ConfigError(
                "fit() needs several passes over the data, but it got a one-shot iterator "
                f"({type(batches).__name__}); pass a list, a re-iterable object, a callable that "
                "returns a fresh iterator, or call partial_fit() once per batch")
        else:
            self.factory = lambda: batches
        self.name = name
        self.n_rows = None
        self.dim = None

    def chunks(self, rows, generator=None, copy=True, check=True):
        """Batches are gathered into chunks of ``rows`` rows (a shuffle buffer when ``generator``
        is given), so mini-batches keep their size whatever size the batches come in."""
        seen = 0
        pending: list[torch.Tensor] = []
        n_pending = 0
        for raw in self.factory():
            t = as_float_tensor(raw, name=self.name)
            if t.shape[0] == 0:
                continue
            check_batch(t, self.dim, row_offset=seen, name=self.name,
                        expected_from="earlier batches have")
            if self.dim is None:
                self.dim = int(t.shape[1])
            seen += t.shape[0]
            pending.append(t)
            n_pending += t.shape[0]
            while n_pending >= rows:
                chunk = torch.cat(pending) if len(pending) > 1 else pending[0]
                yield self._emit(chunk[:rows], generator, copy and len(pending) == 1)
                rest = chunk[rows:]
                pending, n_pending = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)
        if n_pending:
            chunk = torch.cat(pending) if len(pending) > 1 else pending[0]
            yield self._emit(chunk, generator, copy and len(pending) == 1)
        if self.n_rows is None:
            self.n_rows = seen

    @staticmethod
    def _emit(chunk, generator, copy):
        if generator is not None:  # a gather is a copy already
            return chunk[torch.randperm(chunk.shape[0], generator=generator)]
        # the caller may overwrite chunks: never hand out the user's own batch
        return chunk.to("cpu", copy=True) if copy else chunk.to("cpu")

    def sample(self, n, generator):
        """Reservoir sample of ``n`` rows over one pass (Algorithm R, chunk-vectorised)."""
        res: np.ndarray | None = None
        filled = 0
        seen = 0
        rng = np.random.default_rng(int(torch.randint(0, 2**62, (1,), generator=generator)))
        for chunk in self.chunks(1 << 16):
            c = chunk.numpy()
            if res is None:
                res = np.empty((n, c.shape[1]), dtype=np.float32)
            take = min(n - filled, c.shape[0])
            res[filled:filled + take] = c[:take]
            filled += take
            rest = c[take:]
            if rest.shape[0]:
                pos = seen + take + np.arange(rest.shape[0])
                slot = (rng.random(rest.shape[0]) * (pos + 1)).astype(np.int64)
                keep = slot < n
                res[slot[keep]] = rest[keep]
            seen += c.shape[0]
        if res is None:
            raise EmptyInputError(f"{self.name} are empty: the batches yielded no rows")
        out = torch.from_numpy(res[:filled].copy())
        return out[torch.randperm(filled, generator=generator)]  # any prefix is uniform too


def validated(data: np.ndarray) -> Source:
    """A source over a 2-d numeric array that the caller has already validated (finite, not
    empty; :func:`semid_index._inputs.embeddings`): no row is scanned again."""
    src = make_source(data)
    src.checked = True
    return src


def make_source(data, name: str = "embeddings") -> Source:
    """Wrap user input in the right :class:`Source` (a Source is returned as it is); raise a
    typed error for empty input."""
    if isinstance(data, Source):
        return data
    if isinstance(data, (str, os.PathLike)):
        data = load_npy(data)
    if isinstance(data, (torch.Tensor, np.ndarray)):
        src = FileSource(data, name) if FileSource.usable(data) else ArraySource(data, name)
        if src.n_rows == 0:
            raise EmptyInputError(f"{name} are empty: got shape {tuple(data.shape)}")
        if src.dim == 0:
            raise DimensionMismatchError(f"{name} have dim=0: got shape {tuple(data.shape)}")
        return src
    if isinstance(data, (list, tuple)) and data and not isinstance(data[0], (list, tuple)) \
            and not np.isscalar(data[0]):
        return IterableSource(data, name)
    if isinstance(data, (list, tuple)):
        if len(data) == 0:
            raise EmptyInputError(f"{name} are empty: got an empty {type(data).__name__}")
        try:
            rows = np.asarray(data, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise DimensionMismatchError(f"{name} must be a rectangular (N, D) array of numbers: "
                                         f"{exc}") from None
        return make_source(rows, name)
    if callable(data) or hasattr(data, "__iter__"):
        return IterableSource(data, name)
    raise ConfigError(
        f"{name} must be a tensor, an ndarray, a memmap, a path to a .npy file or an iterable "
        f"of batches, got {type(data).__name__}")
