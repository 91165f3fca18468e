"""bf16 first pass with an exact re-check: the fp32 codes, at bf16 GEMM speed where that helps.

At every level the residual r (fp32, exactly as the fp32 path computes it) and the centroids are
rounded to bfloat16 and multiplied with fp32 accumulation (oneDNN on CPUs with AVX512-BF16 or
AMX; tensor cores on CUDA); on the CPU torch returns that product rounded to bf16. Each code's
score ``s_j = ||c_j||^2 - 2 r.c_j (+ price)`` is then off by at most a bound ``E_j`` that is
proven from quantities at hand (see :class:`Bf16Level`): the actual rounding error of the row,
the norms of the centroids and of their rounding errors, the size of the bf16 product (for its
rounding on output), the fp32 sums of both GEMMs (unit roundoffs 2^-8 and 2^-24;
Cauchy-Schwarz bounds the sums of products). The same bound covers how far the fp32 path's own
score can be from the exact one.

A code is a *candidate* when its lower bound ``s_j - E_j`` is within the best upper bound
``min_k (s_k + E_k)``. One candidate: it is the fp32 path's code (every other code's fp32 score
is provably larger). Several: the row's fp32 scores are computed (one GEMM over such rows) and
the best candidate taken. The codes are therefore the fp32 path's, except where two candidates'
fp32 scores are so close that computing them in another block of rows could order them
differently; those rows are counted as near-ties (:class:`Bf16Stats`).

Whether this is faster depends on how much faster the hardware multiplies bf16 than fp32: the
bounds, the candidate test and the re-scored rows cost passes over the (B, K) scores that a
fused kernel would avoid.
"""

from __future__ import annotations

import logging
import os

import torch

from .._inputs import PRECISIONS
from ..errors import ConfigError

log = logging.getLogger("semid_index.quantize")

U_BF16 = 2.0 ** -8
U_F32 = 2.0 ** -24

_override: bool | None = None
_env = os.environ.get("SEMID_BF16")
if _env is not None and _env not in ("0", "1"):  # pragma: no cover - misconfiguration
    raise ConfigError(f"SEMID_BF16={_env!r}: use 1 (bf16 is fast here) or 0 (it is not)")


def set_bf16_fast(value: bool | None) -> None:
    """Override the hardware detection of :func:`bf16_fast`: True or False, or None to detect
    again. (Environment: ``SEMID_BF16=1`` / ``0``.)"""
    global _override
    if value is not None and not isinstance(value, bool):
        raise ConfigError(f"set_bf16_fast takes True, False or None, got {value!r}")
    _override = value


def bf16_fast(device: torch.device | str = "cpu") -> bool:
    """Whether ``device`` multiplies bf16 matrices fast enough for the bf16 first pass to pay
    for its checks: a CUDA device with bf16 support, or a CPU with AMX-BF16 that oneDNN can
    use. Not AVX512-BF16 alone: on such a CPU (a 2-core AMD EPYC, 2026-12-02) bf16 GEMMs ran
    at 2.0x fp32 and the whole bf16 encode at 0.6x fp32's speed. :func:`set_bf16_fast` or
    ``SEMID_BF16`` override the answer."""
    if _override is not None:
        return _override
    if _env is not None:
        return _env == "1"
    dev = torch.device(device)
    if dev.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if dev.type != "cpu":
        return False
    return _cpu_bf16()


_cpu_answer: bool | None = None


def _cpu_bf16() -> bool:
    global _cpu_answer
    if _cpu_answer is None:
        flags: dict = {}
        try:
            flags = dict(torch._C._cpu._get_cpu_capability())
        except Exception:  # noqa: BLE001 - a torch without it: read the kernel's flags
            try:
                with open("/proc/cpuinfo") as f:
                    words = set(f.read().split())
                flags = {"amx_bf16": "amx_bf16" in words}
            except OSError:
                pass
        mkldnn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
        _cpu_answer = bool(flags.get("amx_bf16")) and \
            bool(mkldnn is not None and mkldnn())
    return _cpu_answer


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    return precision


class Bf16Stats:
    """What the bf16 first pass did: rows encoded, row-levels whose candidates were re-scored
    in fp32 (more than one code within the bound), and among those the near-ties (the two best
    fp32 scores closer than the fp32 path's own rounding: the only rows whose code may differ
    from the fp32 path's)."""

    def __init__(self):
        self.rows = 0
        self.rescored = 0
        self.ties = 0


class Bf16Level:
    """bf16 operands of one codebook and the weights of its error bound.

    For a row r and code j the bound is ``E_j = a |v_j| + ||r - r_b|| 2 ||c_j|| + ||r|| w_j +
    b_j``, where ``v_j`` is the bf16 product ``-2 r_b.c_b``. With u = 2^-8 (bf16) and
    g = 1.01 (D + 1) 2^-24 (fp32 sums of D + 1 terms), ``||r_b|| <= (1 + u) ||r||`` gives
    ``w_j = (1 + u)(2 ||c_j - c_bj|| + 2g ||c_bj||) + (2g + 8 u32) ||c_j||`` (the centroids'
    rounding, the bf16 GEMM's fp32 sums, the fp32 path's GEMM); the product's rounding to bf16
    and the fp32 additions give ``a = 2u + 4 u32``; ``b_j = (g + 8 u32)(||c_j||^2 + max
    |price_j|)``.
    """

    __slots__ = ("neg2c", "neg2c32", "cmax", "cn2", "w", "b", "a", "cnorm", "price")

    def __init__(self, book):
        c = book.centroids.float()
        cb = c.bfloat16()
        cbf = cb.float()
        self.neg2c = (-2.0 * cb).contiguous()  # exact: scaling by 2 does not round
        dim = c.shape[1]
        g = 1.01 * (dim + 1) * U_F32
        cn = torch.linalg.vector_norm(c, dim=1)
        dc = torch.linalg.vector_norm(c - cbf, dim=1)
        cbn = torch.linalg.vector_norm(cbf, dim=1)
        self.cn2 = (2 * cn).unsqueeze(0)
        self.w = ((1 + U_BF16) * (2 * dc + 2 * g * cbn) + (2 * g + 8 * U_F32) * cn).unsqueeze(0)
        pmax = 0.0 if book.price is None else book.price.abs().max(0).values
        self.b = ((g + 8 * U_F32) * (book.cnorm.abs() + pmax) + 1e-30).unsqueeze(0)
        self.a = 2 * U_BF16 + 4 * U_F32
        self.neg2c32, self.cnorm, self.price = book.neg2c, book.cnorm, book.price
        self.cmax = float(cn.max())

    def nearest(self, r: torch.Tensor, book, parent: torch.Tensor | None,
                stats: Bf16Stats) -> torch.Tensor:
        """The fp32 path's code (``book.nearest(r, parent=parent)``) of every row of r (B, D),
        from bf16 scores and an fp32 re-score of the rows with more than one candidate."""
        from ._kernels import get_gemm_backend

        rb = r.bfloat16()
        if r.device.type == "cpu" and get_gemm_backend() == "mkldnn":
            v = torch.ops.mkldnn._linear_pointwise(rb, self.neg2c, None, "none", [], "")
        else:
            v = torch.nn.functional.linear(rb, self.neg2c)
        v = v.float()  # (B, K): -2 r_b.c_b, bf16 values
        xn = torch.linalg.vector_norm(r, dim=1).unsqueeze(1)
        dx = torch.linalg.vector_norm(rb.float().sub_(r), dim=1).unsqueeze(1)
        e = torch.addcmul(self.b, xn, self.w).addcmul_(dx, self.cn2).add_(v.abs(), alpha=self.a)
        s = book.priced(v.add_(self.cnorm), parent)
        upper = s + e
        top, lab = upper.min(1)
        lower = s.sub_(e)
        several = (lower <= top.unsqueeze(1)).sum(1) > 1
        rows = several.nonzero()[:, 0]
        if rows.numel():
            lab[rows] = self._rescore(r, rows, lower, top, parent, stats)
        return lab

    def _rescore(self, r, rows, lower, top, parent, stats) -> torch.Tensor:
        """The fp32 path's scores of ``rows`` (one GEMM on those rows), kept only for their
        candidates (lower bound within the best upper bound): their codes. Counts the rows and
        the near-ties among them."""
        from ._kernels import scores

        rr = r.index_select(0, rows)
        exact = scores(rr, self.neg2c32, self.cnorm)
        if self.price is not None:
            exact += self.price[0] if parent is None or self.price.shape[0] == 1 \
                else self.price.index_select(0, parent.index_select(0, rows))
        exact.masked_fill_(lower.index_select(0, rows) > top.index_select(0, rows).unsqueeze(1),
                           float("inf"))
        two = exact.topk(2, dim=1, largest=False).values
        # the fp32 path scores these rows in another block, so it may round them differently
        # by up to twice its error bound: closer than that, the two best are a near-tie
        g = 1.01 * (r.shape[1] + 1) * U_F32
        tol = 2 * (g + 8 * U_F32) * (2 * torch.linalg.vector_norm(rr, dim=1) * self.cmax
                                     + two[:, 0].abs())
        stats.rescored += int(rows.numel())
        stats.ties += int(((two[:, 1] - two[:, 0]) <= tol).sum())
        return exact.argmin(1)
