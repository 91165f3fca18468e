"""The validation boundary: what callers hand to semid_index is checked here, once (numpy only,
no torch). Everything past this module (the quantizer's kernels, the store) trusts its input.

Each function raises a typed error naming the offending value, or returns the value in the one
form the rest of the library uses: keys as ``list[str]``, embeddings as a 2-d numeric array
(viewed in place where possible), a hierarchy as ``list[int]``, prefixes as tuples of ints.
"""

from __future__ import annotations

import math
import os
import re
import unicodedata
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np

from .errors import (ConfigError, DimensionMismatchError, DuplicateKeyError, EmptyInputError,
                     InputFileError, InvalidCodesError, NonFiniteError)
from .ids import SemanticId

MAX_KEY_LENGTH = 1024
MAX_NAME_LENGTH = 200
MAX_LEVELS = 64
MAX_CODEBOOK = 1 << 32
MAX_SUFFIX = 2**31 - 1  # the suffix column is a 32-bit integer
MAX_INT = 2**31 - 2  # versions, limits, batch sizes: 32-bit columns and parameters (limit + 1)
FINITE_BLOCK = 8192  # rows per finiteness check (bounds the float32 copy of a wider block)
MAX_NORM = 1e15  # largest embedding norm: k-means computes squared distances in float32
_DIGITS = re.compile(r"[0-9]{1,10}")
_CURSOR = re.compile(r"(?P<id>[0-9-]+)(?:@v(?P<version>[0-9]{1,10}))?")


# ---------------------------------------------------------------------------- item keys
def item_keys(keys, *, allow_duplicates: bool = False) -> list[str]:
    """Item keys as a list of non-empty str (ints, numpy ints too: their decimal string).

    A key has 1..1024 characters, no NUL, and encodes to UTF-8 (no lone surrogates, such as
    undecodable bytes smuggled in through a command line)."""
    if isinstance(keys, (str, bytes)):
        raise ConfigError(f"item keys must be a sequence of keys, got a single {type(keys).__name__}"
                          f" {keys[:40]!r}: wrap it in a list")
    if isinstance(keys, np.ndarray):
        if keys.ndim != 1:
            raise ConfigError(f"item keys must be a 1-d sequence, got an array of shape "
                              f"{keys.shape}")
        keys = keys.tolist()
    try:
        keys = list(keys)
    except TypeError:
        raise ConfigError(f"item keys must be a sequence of str or int, got "
                          f"{type(keys).__name__}") from None
    if keys and all(type(k) is str for k in keys) and 0 < min(map(len, keys)) and \
            max(map(len, keys)) <= MAX_KEY_LENGTH and not any("\x00" in k for k in keys) and \
            _utf8(keys):
        return _unique(keys, allow_duplicates)  # the common case, checked in C loops
    out = []
    for i, k in enumerate(keys):
        if isinstance(k, str):
            s = k
        elif isinstance(k, (int, np.integer)) and not isinstance(k, (bool, np.bool_)):
            s = str(int(k))
        else:
            raise ConfigError(f"item keys must be str or int; key #{i} is {type(k).__name__} "
                              f"{str(k)[:40]!r}")
        if not s or len(s) > MAX_KEY_LENGTH or "\x00" in s:
            raise ConfigError(f"item key #{i} {s[:40]!r} must have 1..{MAX_KEY_LENGTH} characters "
                              f"and no NUL, has {len(s)}")
        if not _utf8([s]):
            raise ConfigError(f"item key #{i} {s[:40]!r} is not valid Unicode text (it holds a "
                              "lone surrogate, e.g. from undecodable bytes)")
        out.append(s)
    return _unique(out, allow_duplicates)


def _utf8(keys: list[str]) -> bool:
    try:
        for a in range(0, len(keys), KEY_CHUNK):  # in chunks: no copy of all the text at once
            "".join(keys[a:a + KEY_CHUNK]).encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: Keys per chunk of the UTF-8 check.
KEY_CHUNK = 100_000


def _unique(keys: list[str], allow_duplicates: bool) -> list[str]:
    if not allow_duplicates and _has_duplicates(keys):
        dup = [k for k, n in Counter(keys).items() if n > 1]
        raise DuplicateKeyError(f"{len(dup)} item key(s) appear more than once: "
                                f"{', '.join(map(repr, dup[:10]))}{' ...' if len(dup) > 10 else ''}")
    return keys


def _has_duplicates(keys: list[str]) -> bool:
    """Whether a key appears twice, in 8 bytes per key: equal keys have equal hashes, so only
    the keys whose hash repeats are compared (a set of 10M keys would take ~0.5 GB more)."""
    if len(keys) < 1 << 16:
        return len(set(keys)) != len(keys)
    h = np.fromiter(map(hash, keys), dtype=np.int64, count=len(keys))
    h.sort()
    repeated = np.unique(h[1:][h[1:] == h[:-1]])
    if not len(repeated):
        return False
    suspects = set(repeated.tolist())
    maybe = [k for k in keys if hash(k) in suspects]
    return len(set(maybe)) != len(maybe)


def missing_policy(missing: str) -> str:
    """``missing=`` of lookups and removals: ``"raise"`` or ``"skip"`` (the older spellings
    ``"none"`` and ``"ignore"`` still work, with a DeprecationWarning)."""
    if missing in ("none", "ignore"):
        warnings.warn(f"missing={missing!r} is now spelled missing='skip'", DeprecationWarning,
                      stacklevel=3)
        return "skip"
    if missing not in ("raise", "skip"):
        raise ConfigError(f"missing must be 'raise' or 'skip', got {missing!r}")
    return missing


# ---------------------------------------------------------------------------- embeddings
def embeddings(x, n_keys: int | None, dim: int | None = None,
               keys: Sequence[str] | None = None) -> np.ndarray:
    """A 2-d numeric array (N, D), viewed in place where possible, checked once: numbers,
    2-d, ``n_keys`` rows (when given), not empty, ``dim`` columns (when given), every value
    finite in float32 and every row's norm at most ``MAX_NORM`` (the first bad row is named by
    its key when ``keys`` are given).

    x : numpy array or memmap, torch tensor (any device), nested lists, or the path of a
    ``.npy`` file (memory-mapped, never unpickled)."""
    a = _as_array(x)
    if a.dtype.kind not in "fiu":
        raise ConfigError(f"embeddings must be numbers, got dtype {a.dtype}")
    if a.ndim != 2:
        raise DimensionMismatchError(f"embeddings must be 2-d (N, D), got shape {a.shape}")
    if n_keys is not None and a.shape[0] != n_keys:
        raise DimensionMismatchError(f"got {n_keys} item keys but {a.shape[0]} embedding rows")
    if a.shape[0] == 0:
        raise EmptyInputError("no items: keys and embeddings are empty")
    if a.shape[1] == 0:
        raise DimensionMismatchError(f"embeddings have dim=0: got shape {a.shape}")
    if dim is not None and a.shape[1] != dim:
        raise DimensionMismatchError(
            f"embeddings have dim={a.shape[1]} but the index was trained with dim={dim}")
    for start in range(0, a.shape[0], FINITE_BLOCK):  # integers too: they may be too large
        _check_finite(a[start:start + FINITE_BLOCK], start, keys)
    return a


def _as_array(x) -> np.ndarray:
    if isinstance(x, (str, os.PathLike)):
        return load_npy(x)
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # torch.Tensor (imported by its owner)
        t = x.detach().cpu()
        if t.is_complex():
            raise ConfigError(f"embeddings must be real numbers, got dtype {t.dtype}")
        if not t.dtype.is_floating_point or t.element_size() < 4:
            t = t.float()  # bfloat16/float16/integers: numpy has no bfloat16
        return t.numpy()
    if isinstance(x, np.ndarray):
        return x
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # numpy's ragged-array warnings become our error
            a = np.asarray(x)
    except (ValueError, TypeError) as e:
        raise DimensionMismatchError(f"embeddings must be a rectangular (N, D) array of "
                                     f"numbers: {e}") from None
    if a.dtype == object:
        raise DimensionMismatchError("embeddings must be a rectangular (N, D) array of numbers: "
                                     "the rows have different lengths or hold non-numbers")
    return a


def load_npy(path) -> np.ndarray:
    """A ``.npy`` file, memory-mapped; never unpickled. Errors name the file."""
    p = str(path)
    try:
        a = np.load(p, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        raise InputFileError(f"no such file: {p!r}", path=p) from None
    except IsADirectoryError:
        raise InputFileError(f"{p!r} is a directory, not a .npy file", path=p) from None
    except PermissionError:
        raise InputFileError(f"{p!r} may not be read by this process", path=p) from None
    except Exception as e:  # noqa: BLE001 - not .npy, truncated, pickled objects, a bad zip
        raise InputFileError(f"{p!r} is not a readable NumPy .npy array of numbers: "
                             f"{type(e).__name__}: {e}", path=p) from None
    if not isinstance(a, np.ndarray):  # an .npz archive (whatever its name)
        a.close()
        raise InputFileError(f"{p!r} is a NumPy .npz archive, not one .npy array", path=p)
    return a


def _check_finite(block: np.ndarray, offset: int, keys: Sequence[str] | None) -> None:
    """Raise NonFiniteError naming the first row (and its item key) that has a NaN/inf, a value
    beyond float32's range, or a norm above ``MAX_NORM`` (its squared distances would overflow
    the float32 arithmetic of k-means); ``block`` holds rows ``offset, offset + 1, ...``."""
    with np.errstate(over="ignore", invalid="ignore"):
        b = block if block.dtype == np.float32 else block.astype(np.float32)  # overflow: inf
        ok = np.sqrt(np.einsum("ij,ij->i", b, b)) <= MAX_NORM  # NaN and inf are not <=
    if ok.all():
        return
    r = int(np.flatnonzero(~ok)[0])
    bad = np.flatnonzero(~np.isfinite(b[r]))
    what = f"item {keys[offset + r]!r} (row {offset + r})" if keys is not None else \
        f"row {offset + r}"
    if bad.size:
        raise NonFiniteError(
            f"embedding of {what} has a non-finite value (NaN/inf, or beyond float32's range) in "
            f"column {int(bad[0])}; {int((~ok).sum())} row(s) of this block are affected",
            row=offset + r, column=int(bad[0]))
    raise NonFiniteError(
        f"embedding of {what} is too large (norm above {MAX_NORM:g}): its squared distances "
        "overflow float32 arithmetic; scale the embeddings down", row=offset + r)


# ---------------------------------------------------------------------------- hierarchy
def hierarchy(n_levels, codebook_size) -> list[int]:
    """Codebook sizes per level: ``codebook_size`` (one int, or one per level) for
    ``n_levels`` levels, each in 1..2**32."""
    if isinstance(n_levels, (bool, np.bool_)) or not isinstance(n_levels, (int, np.integer)) \
            or not 1 <= n_levels <= MAX_LEVELS:
        raise ConfigError(f"n_levels must be an int in 1..{MAX_LEVELS}, got {n_levels!r}")
    if isinstance(codebook_size, (int, np.integer)) and not isinstance(codebook_size, bool):
        sizes = [codebook_size] * int(n_levels)
    elif isinstance(codebook_size, (list, tuple, np.ndarray)):
        sizes = list(codebook_size)
    else:
        raise ConfigError(f"codebook_size must be an int or one int per level, got "
                          f"{codebook_size!r}")
    if len(sizes) != n_levels:
        raise ConfigError(f"codebook_size has {len(sizes)} entries for {n_levels} levels")
    for s in sizes:
        if isinstance(s, (bool, np.bool_)) or not isinstance(s, (int, np.integer)) or \
                not 1 <= s <= MAX_CODEBOOK:
            raise ConfigError(f"codebook sizes must be ints in 1..2**32, got {sizes}")
    return [int(s) for s in sizes]


def _int(lo: int, hi: float = math.inf, none: bool = False):
    def check(v) -> bool:
        return (none and v is None) or (isinstance(v, (int, np.integer))
                                        and not isinstance(v, (bool, np.bool_))
                                        and bool(lo <= v <= hi))
    check.__doc__ = f"an int >= {lo}" + (" or None" if none else "")
    return check


def _number(lo: float, strict: bool = False, none: bool = False, finite: bool = False):
    def check(v) -> bool:
        return (none and v is None) or (
            isinstance(v, (int, float, np.integer, np.floating)) and
            not isinstance(v, (bool, np.bool_)) and not math.isnan(v) and
            (math.isfinite(v) or not finite) and bool(v > lo if strict else v >= lo))
    check.__doc__ = f"a {'finite ' if finite else ''}number {'>' if strict else '>='} {lo}" + \
        (" or None" if none else "")
    return check


def _flag(v) -> bool:
    """a bool"""
    return isinstance(v, (bool, np.bool_))


def _device(v) -> bool:
    """a device name such as 'cpu', 'cuda' or 'cuda:1'"""
    return isinstance(v, str) and re.fullmatch(r"(cpu|cuda|mps|xpu)(:[0-9]{1,3})?", v) is not None


def _balance(v) -> bool:
    """None, a finite number >= 0, or a list of one such number or None per level"""
    one = _number(0, none=True, finite=True)
    return one(v) or (isinstance(v, (list, tuple)) and len(v) > 0 and all(one(e) for e in v))


def _mode(v) -> bool:
    """'default' or 'grid'"""
    return v in ("default", "grid")


#: How ``encode`` may score codes (see ``precision`` in ResidualKMeans).
PRECISIONS = ("fp32", "bf16")


def _precision(v) -> bool:
    """'fp32' or 'bf16'"""
    return v in PRECISIONS


#: the options of ResidualKMeans an index stores, and what each must be
MODEL_OPTIONS = {
    "normalize_residuals": _flag, "train_layer_wise": _flag, "batch_size": _int(1),
    "max_epochs": _number(0, strict=True), "max_steps": _int(0, none=True), "tol": _number(0),
    "max_no_improvement": _int(1, none=True), "init_size": _int(1, none=True),
    "n_init_trials": _int(1, none=True), "reassign_empty": _flag,
    "n_polish": _int(0, none=True), "polish_tol": _number(0, none=True),
    "train_size": _int(1, none=True), "check_input": _flag,
    "seed": _int(-2**63, 2**64 - 1), "device": _device, "mode": _mode,
    "exact_work": _number(0), "balance": _balance,
    "max_per_code": _int(1, 2**31 - 2, none=True), "precision": _precision,
}


def index_options(options: dict) -> dict:
    """Check an index's options (the quantizer's, :data:`MODEL_OPTIONS`, ``max_per_code``
    included: it shapes training and relocation, see :mod:`semid_index._relocate`); returns
    them."""
    return model_options(options)


def quantizer_options(options: dict) -> dict:
    """The quantizer's part of an index's stored options."""
    return {k: v for k, v in options.items() if k in MODEL_OPTIONS}


def model_options(options: dict, *, known: Sequence[str] | None = None) -> dict:
    """Check quantizer options by name and value (the same rules ``ResidualKMeans`` applies);
    returns them unchanged."""
    names = MODEL_OPTIONS if known is None else known
    bad = sorted(set(options) - set(names))
    if bad:
        raise ConfigError(f"unknown option(s) {bad}; known: {', '.join(names)}")
    for name, value in options.items():
        check = MODEL_OPTIONS.get(name)
        if check is not None and not check(value):
            raise ConfigError(f"{name} must be {check.__doc__}, got {value!r}")
    layer_wise = options.get("mode", "default") == "default" and \
        options.get("train_layer_wise", True)
    if options.get("balance") is not None and not layer_wise:
        raise ConfigError("balance needs the layer-wise default mode (mode='default', "
                          "train_layer_wise=True)")
    return options


def index_name(name) -> str:
    """An index name: 1..200 characters, not only spaces, no control characters."""
    if not isinstance(name, str) or not name.strip() or len(name) > MAX_NAME_LENGTH or \
            any(unicodedata.category(ch) in ("Cc", "Cs") for ch in name):
        raise ConfigError(f"an index name must be a str of 1..{MAX_NAME_LENGTH} printable "
                          f"characters, got {name!r}")
    return name


def positive_int(name: str, value, maximum: int = MAX_INT) -> int:
    """``value`` as an int in 1..``maximum`` (versions, limits and batch sizes are 32-bit)."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or \
            not 1 <= value <= maximum:
        raise ConfigError(f"{name} must be an int in 1..{maximum}, got {value!r}")
    return int(value)


def version_number(version) -> int | None:
    """``version=`` of a read: None (the active version) or a positive int."""
    return None if version is None else positive_int("version", version)


# ---------------------------------------------------------------------------- prefixes
def prefix_tuple(prefix, sizes: Sequence[int], *, min_depth: int) -> tuple[int, ...]:
    """A prefix as a tuple of level codes from a sequence of ints, a SemanticId (its levels),
    or a string like ``"12-201"``. Checks the depth (``min_depth..L``) and each code against its
    codebook; floats, bools, bytes and other non-integers are refused, never truncated."""
    if isinstance(prefix, SemanticId):
        out = prefix.levels
    elif isinstance(prefix, str):
        text = prefix.strip()
        parts = text.split("-") if text else []
        if not all(_DIGITS.fullmatch(p) for p in parts):
            raise InvalidCodesError(f"malformed prefix {prefix!r}: expected codes (digits 0-9) "
                                    "joined by '-', e.g. '12-201'")
        out = tuple(int(p) for p in parts)
    elif isinstance(prefix, (tuple, list)) or (isinstance(prefix, np.ndarray)
                                                and prefix.ndim == 1):
        vals = prefix.tolist() if isinstance(prefix, np.ndarray) else list(prefix)
        if not all(isinstance(c, (int, np.integer)) and not isinstance(c, (bool, np.bool_))
                   for c in vals):
            raise InvalidCodesError(f"a prefix holds integer level codes, got {prefix!r}")
        out = tuple(int(c) for c in vals)
    else:
        raise InvalidCodesError(f"a prefix is a tuple of level codes, a SemanticId or a string "
                                f"like '12-201', got {type(prefix).__name__} {prefix!r}")
    if not min_depth <= len(out) <= len(sizes):
        raise InvalidCodesError(
            f"prefix {out} has depth {len(out)}; this index has {len(sizes)} levels, so the "
            f"depth must be in {min_depth}..{len(sizes)}")
    for lv, (c, k) in enumerate(zip(out, sizes)):
        if not 0 <= c < k:
            raise InvalidCodesError(f"prefix {out}: level-{lv + 1} code {c} is outside 0..{k - 1}")
    return out


def cursor(text, sizes: Sequence[int], prefix: tuple[int, ...]
           ) -> tuple[tuple[int, ...], int, int | None]:
    """A prefix page's cursor: ``"12-201-7-0@v3"`` (the last ID of the page and the version it
    was read from; a plain ID string is accepted too) -> (levels, suffix, version or None)."""
    m = _CURSOR.fullmatch(text.strip()) if isinstance(text, str) else None
    parts = m.group("id").split("-") if m else []
    if not m or len(parts) != len(sizes) + 1 or not all(_DIGITS.fullmatch(p) for p in parts):
        raise InvalidCodesError(f"malformed cursor {str(text)[:60]!r}: pass back the cursor of "
                                "the previous page, e.g. '12-201-7-0@v1'")
    levels = tuple(int(p) for p in parts[:-1])
    suffix = int(parts[-1])
    prefix_tuple(levels, sizes, min_depth=len(sizes))
    if suffix > MAX_SUFFIX:
        raise InvalidCodesError(f"cursor {text!r}: suffix {suffix} is out of range")
    if levels[:len(prefix)] != prefix:
        raise InvalidCodesError(f"cursor {text!r} does not belong to prefix {prefix}")
    version = m.group("version")
    return levels, suffix, None if version is None else positive_int("cursor version",
                                                                     int(version))
