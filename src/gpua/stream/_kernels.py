r"""Per-chunk work of a streamed fit: pure functions of (chunk, small broadcast state).

Each function reads its chunk of rows itself (from shards on shared storage, or from arrays held
by the calling process), so the same code runs in the driver process, on Dask workers, or on a
federated client, and returns only :math:`O(K d)` sums: column sums of the plan, centre sums
:math:`P^\top Q`, counts. Nothing of size :math:`N \times K` leaves a chunk.

The Sinkhorn kernel of a chunk is the *tile*

.. math::
    T_{ik} = \exp\big(S_{ik}/\varepsilon + g^{\text{ref}}_k - m_i\big),
    \qquad m_i = \max_k (S_{ik}/\varepsilon + g^{\text{ref}}_k),

so that for the current class potential :math:`g` (a :math:`K`-vector) the plan with exact row
marginals :math:`a_i = 1/N` is

.. math::
    P_{ik} = a_i \frac{T_{ik} w_k}{\sum_l T_{il} w_l},\qquad w = e^{g - g^{\text{ref}}}:

the row potential is recomputed, never stored. A tile is kept in this process's memory
between passes when the budget allows (``Part.cache``), else rebuilt from the features each
pass; when :math:`\max |g - g^{\text{ref}}|` grows past ``absorb_at`` the scaling is absorbed
into the tile (rows renormalised), as :func:`gpua.ot.sinkhorn` does for the whole matrix.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from .._backend import as_tensor
from .._errors import GPUAError
from ..fitting import FitConfig, check_not_one_image
from ..prior import prior_responsibilities
from ..procrustes import query_vlm_cross
from ..projection import PlanProjection, projected_plan, query_moments
from ..query import build_query, centre_rows, mapped_cosines, mapped_rows, second_moment_sum, target_prototypes, zero_shot_cosines
from ..ucm import INIT_LOGIT_SCALE, fused_score, top_rows

__all__ = ["FitSpec", "RoundSpec", "Part", "ArraySource", "WhitenedRows", "merge_stats", "part_vfm_rows"]

# Rows per float64 block when a float32 tile is reduced (a few MB: stays in cache).
_BLOCK = 512


@dataclass
class FitSpec:
    r"""What every chunk task of one fit needs (broadcast once).

    Build it with :meth:`from_config`; a self-learning round broadcasts a copy with another
    ``token`` and its ``score_map`` (``dataclasses.replace``).

    Attributes
    ----------
    token : str
        Names this fit's cached tiles in each process.
    Y : tensor of shape (n_classes, d_vlm), float32, CPU
        The prototypes the map is fitted to (:func:`gpua.query.target_prototypes`).
    query : {"vfm", "fused"}
    vfm_mean : tensor of shape (d_vfm,) or None
    lam, eps, temperature : float
    similarity : str
    n_total : int
        :math:`N`, for the row marginal :math:`1/N`.
    device : str
    tile_dtype : {"float64", "float32", "float16"}
    assignment : {"soft", "hard"}
    score_map : tensor of shape (d_q, d_vlm) or None
        None: UCM's VLM term scores the chunk's normalised VLM rows :math:`X`; a map :math:`W`
        (a self-learning round): it scores :math:`\mathrm{normalize}(Q W)` instead.
    init_logit_scale : float
        :math:`s` of the confident-centre initialisation :math:`\mathrm{softmax}(s\, X Y^\top)`.
    absorb_at : float
    vlm_mean : tensor of shape (d_vlm,) or None
        The pool's mean normalised VLM row (``center_vlm``): every chunk's VLM rows are centred on it.
    whiten : tensor of shape (d_q, d) or None
        The pool's whitening map (``GPUA(whiten=...)``, :func:`gpua.query.whitening_from_moment`
        on the chunks' :func:`part_second_moment`): every chunk's query is :math:`\mathrm{normalize}(Q M)`.
    """

    token: str
    Y: torch.Tensor
    query: str
    vfm_mean: torch.Tensor | None
    lam: float
    eps: float
    similarity: str
    temperature: float
    n_total: int
    device: str
    tile_dtype: str = "float64"
    assignment: str = "soft"
    score_map: torch.Tensor | None = None
    init_logit_scale: float = INIT_LOGIT_SCALE
    absorb_at: float = 30.0
    vlm_mean: torch.Tensor | None = None
    whiten: torch.Tensor | None = None

    @classmethod
    def from_config(cls, token: str, Y: torch.Tensor, config: FitConfig, n_total: int, tile_dtype: str = "float64") -> "FitSpec":
        """The spec of a fit with the checked settings ``config`` (:func:`gpua.fitting.check_entry`)."""
        m = config.mining
        return cls(
            token=token, Y=target_prototypes(Y, config.center_vlm), query=config.query, vfm_mean=None, lam=float(m.lam), eps=float(m.eps), similarity=m.similarity,
            temperature=float(m.temperature), n_total=int(n_total), device=str(config.device), tile_dtype=tile_dtype,
            assignment=m.assignment,
        )


@dataclass
class RoundSpec:
    """Broadcast once per UCM round.

    Attributes
    ----------
    round : int
    centres : tensor of shape (n_classes, d_q), float32
    prev_centres, prev_g : tensors or None
        The previous round's centres and final class potential (float64), to rebuild its plan
        when it was not kept.
    """

    round: int
    centres: torch.Tensor
    prev_centres: torch.Tensor | None = None
    prev_g: torch.Tensor | None = None


@dataclass(frozen=True)
class Part:
    """One chunk of rows ``[start, stop)`` of a source, and whether its tile stays in memory."""

    index: int
    source: Any
    start: int
    stop: int
    cache: bool = False
    keep_previous: bool = False
    client: int = 0
    keep_rows: bool = False


class ArraySource:
    """In-memory features with the reading interface of :class:`~gpua.stream.ShardedFeatures`.

    Parameters
    ----------
    vfm_features : array of shape (n_samples, d_vfm)
    vlm_features : array of shape (n_samples, d_vlm)
    offset : int
        Global index of the first row (a federated client's rows sit at
        ``[offset, offset + n_samples)`` of the union); reads take global rows.
    """

    def __init__(self, vfm_features, vlm_features, offset: int = 0):
        from .._validation import check_matrix

        Z = check_matrix(vfm_features, "vfm_features")
        X = check_matrix(vlm_features, "vlm_features", n_rows=Z.shape[0])
        cpu = torch.device("cpu")
        self._data = {"vfm_features": as_tensor(Z, cpu), "vlm_features": as_tensor(X, cpu)}  # shared, not copied
        self.n_samples = Z.shape[0]
        self.offset = int(offset)
        self.widths = {k: int(v.shape[1]) for k, v in self._data.items()}
        self.dtype = "float32"
        self.classnames = None

    def __len__(self) -> int:
        return self.n_samples

    def read(self, key: str, start: int, stop: int, *, device="cpu", dtype=torch.float32) -> torch.Tensor:
        return self._data[key][start - self.offset : stop - self.offset].to(device=device, dtype=dtype)

    def take(self, key: str, indices, *, device="cpu", dtype=torch.float32) -> torch.Tensor:
        idx = torch.as_tensor(indices, dtype=torch.long).cpu() - self.offset
        return self._data[key][idx].to(device=device, dtype=dtype)

    def text_prototypes(self):
        return None

    def fingerprint(self) -> str:
        """A string that changes when any value of the features, or their row order, changes.

        The shapes, the offset and every byte of both float32 matrices (the values a fit reads),
        hashed with SHA-256 in blocks of rows, so no copy of a matrix is made (about 1 GB/s on
        CPUs with SHA instructions, which make it faster there than BLAKE2b: 0.4 s for
        50,000 x 1,792 float32). Every row counts: a sample of rows misses data that differs
        elsewhere, such as rows permuted except the sampled ones, and a checkpoint of another
        fit would then be resumed without a word.

        Returns
        -------
        str
        """
        h = hashlib.sha256()
        h.update(f"arrays:{self.offset}:{self.dtype}".encode())
        for key in ("vfm_features", "vlm_features"):
            A = self._data[key].numpy()  # a view of the tensor's memory
            h.update(f":{key}{tuple(A.shape)}:".encode())
            block = max(1, _HASH_BLOCK_BYTES // max(1, A.shape[1] * A.itemsize))
            for start in range(0, A.shape[0], block):
                h.update(np.ascontiguousarray(A[start : start + block]))  # a view when A is C-ordered (check_matrix makes it so)
        return "arrays:sha256:" + h.hexdigest()


#: Bytes hashed per call by :meth:`ArraySource.fingerprint` (whole rows of a matrix): a block that
#: has to be made contiguous is a small copy, and 1 MiB hashed faster than 16 MiB.
_HASH_BLOCK_BYTES = 1 << 20


# --- the per-process store of tiles -----------------------------------------------------------
@dataclass
class _State:
    round: int = -1
    tile: torch.Tensor | None = None
    g_ref: torch.Tensor | None = None
    prev_round: int = -1
    prev_plan: torch.Tensor | None = None
    inv_norm: torch.Tensor | None = None  # 1 / ||Q0_i M|| of the chunk's whitened rows (WhitenedRows)
    rows: tuple | None = None  # (stage, (Z, Q, S)) as _read builds them, when the plan keeps rows (Part.keep_rows)


_STORE: dict[tuple[str, int], _State] = {}


def drop(token: str) -> int:
    """Free this process's tiles of fit ``token``; returns how many chunks were held."""
    keys = [k for k in _STORE if k[0] == token]
    for k in keys:
        del _STORE[k]
    return len(keys)


def prepare_worker() -> bool:
    """Run once on each Dask worker: the same allocator setting as the driver's."""
    from ._budget import release_freed_memory

    return release_freed_memory()


def _device(fit: FitSpec) -> torch.device:
    return torch.device(fit.device)


class WhitenedRows:
    r"""A chunk's whitened query rows :math:`\mathrm{normalize}(Q_0 M)`, kept as :math:`Q_0`, :math:`M` and :math:`1 / \lVert Q_0 M \rVert`.

    A streamed fit reads each chunk some twenty times (the rounds' tiles and sums, the
    self-learning rounds' scores), and every use of the query there is a product with a small
    matrix: :math:`Q B = \mathrm{diag}(r^{-1})\, Q_0 (M B)` and
    :math:`A Q = ((A\,\mathrm{diag}(r^{-1})) Q_0) M` cost what they cost unwhitened, where
    forming :math:`Q_0 M` on every read would add a :math:`d_q \times d` product per row (at
    :math:`K = 1000`, where :math:`d = d_q`, it doubled the UCM time). The row norms are
    computed once per chunk and mining (:func:`_inverse_norms`, kept with the mining's tiles).

    Parameters
    ----------
    Q0 : tensor of shape (n_rows, d_q)
        The unwhitened query rows (:func:`gpua.query.build_query` without ``whiten``).
    M : tensor of shape (d_q, d)
    inv_norm : tensor of shape (n_rows,)
    """

    def __init__(self, Q0: torch.Tensor, M: torch.Tensor, inv_norm: torch.Tensor):
        self.Q0, self.M, self.inv_norm = Q0, M, inv_norm

    @property
    def shape(self) -> tuple[int, int]:
        return (self.Q0.shape[0], self.M.shape[1])

    @property
    def dtype(self) -> torch.dtype:
        return self.Q0.dtype

    @property
    def device(self) -> torch.device:
        return self.Q0.device

    def __matmul__(self, B: torch.Tensor) -> torch.Tensor:
        """:math:`Q B` for ``B`` of shape (d, m)."""
        return (self.Q0 @ (self.M @ B)).mul_(self.inv_norm[:, None])

    def left(self, A: torch.Tensor) -> torch.Tensor:
        """:math:`A Q` for ``A`` of shape (m, n_rows)."""
        return ((A * self.inv_norm[None, :]) @ self.Q0) @ self.M

    def __getitem__(self, idx) -> torch.Tensor:
        """The whitened rows ``idx``, formed (indexing as a tensor of the rows would)."""
        return (self.Q0[idx] @ self.M).mul_(self.inv_norm[idx, None])


def _inverse_norms(part: Part, fit: FitSpec, Q0: torch.Tensor, M: torch.Tensor) -> torch.Tensor:
    r""":math:`1 / \lVert Q_0 M \rVert` per row, once per chunk and fit token (a mining's: freed with its tiles by :func:`drop`)."""
    st = _STORE.setdefault((fit.token, part.index), _State())
    if st.inv_norm is None or st.inv_norm.device != Q0.device:
        norms = torch.cat([(Q0[i : i + _BLOCK * 8] @ M).norm(dim=1) for i in range(0, Q0.shape[0], _BLOCK * 8)])
        st.inv_norm = 1.0 / norms.clamp_min(1e-12)  # the floor of torch.nn.functional.normalize
    return st.inv_norm


def _left(A: torch.Tensor, Q) -> torch.Tensor:
    """:math:`A Q` for a query held whole or as :class:`WhitenedRows`."""
    return Q.left(A) if isinstance(Q, WhitenedRows) else A @ Q


def _formed(Q) -> torch.Tensor:
    """The query rows as one tensor (:class:`WhitenedRows` formed: only where a product will not do)."""
    return Q[:] if isinstance(Q, WhitenedRows) else Q


def _read(part: Part, fit: FitSpec, dev: torch.device, check: bool = False):
    r"""(raw Z, query Q, score rows S) of the chunk, float32 on ``dev``; rows checked when ``check``.

    :math:`Q` is a tensor, or :class:`WhitenedRows` when the fit whitens the query.
    :math:`S` is what UCM's VLM term compares with the prototypes: the normalised VLM rows
    :math:`X`, or :math:`\mathrm{normalize}(Q W)` when ``fit.score_map`` is a map :math:`W`.
    """
    # A fit's means and whitening are set once, from None, by the passes before its first mining
    # (which read the rows without them), and a mining's score map is fixed with its token: kept
    # rows are used only for the same stage of the spec.
    stage = (fit.query, fit.vfm_mean is None, fit.vlm_mean is None, fit.whiten is None, fit.score_map is None)
    st = _STORE.get((fit.token, part.index)) if part.keep_rows else None
    if st is not None and st.rows is not None and st.rows[0] == stage and not check:
        return st.rows[1]  # built by an earlier pass of this mining (the plan had room for them)
    Z = part.source.read("vfm_features", part.start, part.stop, device=dev)
    X = part.source.read("vlm_features", part.start, part.stop, device=dev)
    if check:
        _check_rows(part, Z, X)
    mean = None if fit.vfm_mean is None else fit.vfm_mean.to(dev)
    X = centre_rows(X, None if fit.vlm_mean is None else fit.vlm_mean.to(dev))
    Q = build_query(Z, X, fit.query, mean)
    if fit.whiten is not None:
        M = fit.whiten.to(dev)
        Q = WhitenedRows(Q, M, _inverse_norms(part, fit, Q, M))
    S = X if fit.score_map is None else mapped_rows(Q, fit.score_map.to(dev))
    if part.keep_rows:  # the score rows too: a self-learning mining's cost a product per read
        _STORE.setdefault((fit.token, part.index), _State()).rows = (stage, (Z, Q, S))
    return Z, Q, S


def part_vfm_rows(part: Part, fit: FitSpec) -> torch.Tensor:
    """The chunk's VFM rows as the self-learning criterion sees them: normalised (and centred), on the fit's device."""
    dev = _device(fit)
    Z = part.source.read("vfm_features", part.start, part.stop, device=dev)
    return build_query(Z, None, "vfm", None if fit.vfm_mean is None else fit.vfm_mean.to(dev))


def _tile(Q: torch.Tensor, S_rows: torch.Tensor, fit: FitSpec, C: torch.Tensor, g: torch.Tensor, dev) -> torch.Tensor:
    r"""Row-max-normalised kernel :math:`\exp(S/\varepsilon + g - m)` in float64, shape (n_rows, K)."""
    Q = Q if fit.similarity == "cosine" else _formed(Q)  # -distance needs the rows' norms too
    S = fused_score(Q, C.to(dev), S_rows, fit.Y.to(dev), fit.lam, fit.similarity, fit.temperature)
    A = S.div_(fit.eps).double().add_(g.to(dev))
    del S
    return A.sub_(A.amax(1, keepdim=True)).exp_()


def _blocks(T: torch.Tensor):
    """Row blocks of ``T`` in float64 (the whole tile when it is float64 already)."""
    if T.dtype == torch.float64:
        yield 0, T
        return
    for i in range(0, T.shape[0], _BLOCK):
        yield i, T[i : i + _BLOCK].double()


def _columns(T: torch.Tensor, w: torch.Tensor | None, a: float) -> torch.Tensor:
    r"""Column sums :math:`\sum_i P_{ik}` of the row-exact plan for scaling ``w`` (None = ones)."""
    col = torch.zeros(T.shape[1], dtype=torch.float64, device=T.device)
    for _, B in _blocks(T):
        s = B.sum(1) if w is None else B @ w
        col += B.T @ (a / s)
    return col if w is None else col * w


def _plan(T: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
    """The plan with rows summing to one (float32, shape (n_rows, K))."""
    P = torch.empty(T.shape, dtype=torch.float32, device=T.device)
    for i, B in _blocks(T):
        B = B if w is None else B * w
        P[i : i + B.shape[0]] = B.div_(B.sum(1, keepdim=True))
    return P


def _scaling(st: _State, g: torch.Tensor, fit: FitSpec) -> torch.Tensor:
    """:math:`w = e^{g - g^{ref}}` for a cached tile, absorbing it first when it grew large."""
    diff = g.to(st.g_ref.device) - st.g_ref
    if float(diff.abs().max()) > fit.absorb_at:
        # Scalings this large would overflow exp(); fold them into the tile and renormalise rows
        # (in float64: e^30 overflows a half-precision tile before the renormalisation).
        T = st.tile.double().mul_(diff.exp())
        st.tile = T.div_(T.amax(1, keepdim=True)).to(st.tile.dtype)
        del T
        st.g_ref = g.to(st.g_ref.device).clone()
        diff = torch.zeros_like(diff)
    return diff.exp()


def _current(part: Part, fit: FitSpec, rnd: RoundSpec, g: torch.Tensor, dev, features=None):
    """(tile, scaling, features) for this round: the cached tile, or one rebuilt with g_ref = g."""
    st = _STORE.get((fit.token, part.index))
    if st is not None and st.round == rnd.round and st.tile is not None:
        return st.tile, _scaling(st, g, fit), features
    features = features or _read(part, fit, dev)
    return _tile(features[1], features[2], fit, rnd.centres, g, dev), None, features


def _check_rows(part: Part, Z: torch.Tensor, X: torch.Tensor) -> None:
    """Finite, non-zero rows, or a GPUAError naming the first bad global row (and its shard)."""
    for name, A in (("vfm_features", Z), ("vlm_features", X)):
        bad = ~torch.isfinite(A).all(1)
        zero = ~(A != 0).any(1)
        for what, mask, fix in (("NaN or inf", bad, "drop or re-extract those rows"), ("an all-zero row", zero, "remove it or re-extract it")):
            if bool(mask.any()):
                row = part.start + int(mask.nonzero()[0, 0])
                where = ""
                offsets = getattr(part.source, "offsets", None)
                if offsets is not None:
                    shard = int(np.searchsorted(offsets, row, side="right")) - 1
                    where = f" (shard {shard}, local row {row - int(offsets[shard])})"
                raise GPUAError(f"{name} has {what} at row {row}{where}; {fix}.")


# --- tasks --------------------------------------------------------------------------------------
def part_mean(part: Part, fit: FitSpec) -> torch.Tensor:
    """Sums of the L2-normalised VFM and VLM rows, float64 of shape (d_vfm + d_vlm,) (for centering)."""
    dev = _device(fit)
    Z = part.source.read("vfm_features", part.start, part.stop, device=dev)
    X = part.source.read("vlm_features", part.start, part.stop, device=dev)
    _check_rows(part, Z, X)
    normalize = torch.nn.functional.normalize
    return torch.cat([normalize(Z, dim=1), normalize(X, dim=1)], dim=1).sum(0, dtype=torch.float64).cpu()


def set_pool_means(fit: FitSpec, config: FitConfig, sums: list[torch.Tensor], n: int, d_vfm: int) -> None:
    """Set ``fit.vfm_mean`` / ``fit.vlm_mean`` (as ``config.center`` / ``center_vlm`` ask) from :func:`part_mean` sums.

    A pool of one image copied is refused here, as the in-memory fit refuses it
    (:func:`gpua.fitting.check_not_one_image`).
    """
    total = sum_tensors(sums) / n
    check_not_one_image(n, total[:d_vfm], total[d_vfm:] if config.query == "fused" else None)
    fit.vfm_mean = total[:d_vfm].float() if config.center else None
    fit.vlm_mean = total[d_vfm:].float() if config.center_vlm else None


def _zero_shot_proba(part: Part, Y: torch.Tensor, logit_scale: float, dev):
    r"""The chunk's rows and the VLM's zero-shot probabilities :math:`\mathrm{softmax}(s\,\cos(x_i, y_k))`."""
    Z = part.source.read("vfm_features", part.start, part.stop, device=dev)
    X = part.source.read("vlm_features", part.start, part.stop, device=dev)
    _check_rows(part, Z, X)
    scores = zero_shot_cosines(X, Y.to(dev))
    return Z, X, scores, torch.softmax(float(logit_scale) * scores, dim=1)


def part_prior_sums(part: Part, fit: FitSpec, Y: torch.Tensor, prior: torch.Tensor, logit_scale: float) -> torch.Tensor:
    r"""One EM step's sums over the chunk (:func:`gpua.prior.em_class_prior` on rows that are never
    gathered): :math:`\sum_i r_{ik}` under ``prior`` (:func:`gpua.prior.prior_responsibilities`),
    float64 of shape (n_classes,)."""
    *_, p = _zero_shot_proba(part, Y, logit_scale, _device(fit))
    return prior_responsibilities(p, prior).sum(0).cpu()


def part_class_sums(part: Part, fit: FitSpec, Y: torch.Tensor, prior: torch.Tensor, logit_scale: float) -> torch.Tensor:
    r"""The chunk's rows summed per class under the VLM's zero-shot responsibilities, for
    :func:`gpua.prior.balanced_mean` over a pool read in chunks.

    :math:`r_{ik} \propto p_{ik}\,\pi_k` with :math:`p_i = \mathrm{softmax}(s\,\cos(x_i, y_k))`
    (:func:`gpua.prior.em_class_prior`'s responsibilities at the prior ``prior``).

    Returns
    -------
    float64 tensor of shape (n_classes, d_vfm + d_vlm + 2)
        Per class: :math:`\sum_i r_{ik} \bar z_i`, :math:`\sum_i r_{ik} \bar x_i` (L2-normalised
        rows), the mass :math:`\sum_i r_{ik}`, and how many rows have the class as their zero-shot argmax.
    """
    Z, X, scores, p = _zero_shot_proba(part, Y, logit_scale, _device(fit))
    r = prior_responsibilities(p, prior)
    normalize = torch.nn.functional.normalize
    rows = torch.cat([normalize(Z, dim=1), normalize(X, dim=1)], dim=1).to(torch.float64)
    counts = torch.bincount(scores.argmax(1), minlength=Y.shape[0]).to(torch.float64)
    return torch.cat([r.T @ rows, r.sum(0)[:, None], counts[:, None]], dim=1).cpu()


def part_second_moment(part: Part, fit: FitSpec) -> torch.Tensor:
    r""":math:`Q^\top Q` of the chunk's query (centred as the fit's means say, not whitened), float64 of shape (d_q, d_q)."""
    _, Q, _ = _read(part, replace(fit, whiten=None), _device(fit))
    return second_moment_sum(Q).cpu()


def part_candidates(part: Part, fit: FitSpec, m: int) -> tuple[torch.Tensor, torch.Tensor]:
    r"""This chunk's ``m`` most confident rows per class under :math:`\mathrm{softmax}(s X Y^\top)`.

    (:math:`X` is the score rows of :func:`_read`.) Also checks the rows (finite, non-zero). The union over chunks holds the global top ``m``
    (:func:`gpua.ucm.confident_centres`, with ties broken by row: :func:`top_rows`).

    Returns
    -------
    values : tensor of shape (min(m, n_rows), n_classes), float32
    rows : int64 tensor of the same shape: global row indices
    """
    dev = _device(fit)
    _, _, S_rows = _read(part, fit, dev, check=True)
    probs = torch.softmax(fit.init_logit_scale * (S_rows @ fit.Y.to(dev).T), dim=1)
    ids = torch.arange(part.start, part.stop, device=dev)
    top_p, top_i = top_rows(probs, ids, m)
    return top_p.cpu(), top_i.cpu()


def part_init_sums(part: Part, fit: FitSpec, rows: torch.Tensor, classes: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    r""":math:`\sum p\, Q_i` per class over the selected ``(row, class, p)`` that fall in this chunk.

    Returns
    -------
    tensor of shape (n_classes, d_q), float64
    """
    dev = _device(fit)
    _, Q, _ = _read(part, fit, dev)
    mine = (rows >= part.start) & (rows < part.stop)
    rows, classes, weights = rows[mine], classes[mine], weights[mine]
    out = torch.zeros(fit.Y.shape[0], Q.shape[1], dtype=torch.float64, device=dev)
    if rows.numel():
        local = (rows - part.start).to(dev)
        out.index_add_(0, classes.to(dev), Q[local].double() * weights.to(dev).double()[:, None])
    return out.cpu()


def part_build(part: Part, fit: FitSpec, rnd: RoundSpec, g0: torch.Tensor) -> torch.Tensor:
    """Build this round's tile (kept if ``part.cache``); return the plan's column sums for ``g0``."""
    dev = _device(fit)
    _, Q, S_rows = _read(part, fit, dev)
    T = _tile(Q, S_rows, fit, rnd.centres, g0, dev)
    col = _columns(T, None, 1.0 / fit.n_total)
    if part.cache:
        st = _STORE.setdefault((fit.token, part.index), _State())
        st.tile = T if fit.tile_dtype == "float64" else T.to(getattr(torch, fit.tile_dtype))
        st.g_ref = g0.to(dev, torch.float64).clone()
        st.round = rnd.round
    return col.cpu()


def part_pass(part: Part, fit: FitSpec, rnd: RoundSpec, g: torch.Tensor) -> torch.Tensor:
    """One Sinkhorn pass on this chunk: rows made exact for ``g``; return the column sums."""
    dev = _device(fit)
    T, w, _ = _current(part, fit, rnd, g, dev)
    return _columns(T, w, 1.0 / fit.n_total).cpu()


def _plan_sums(part: Part, fit: FitSpec, P: torch.Tensor, Q) -> dict:
    """:func:`part_stats`'s sums of a plan ``P`` (rows summing to one) over the chunk's query ``Q`` (``change`` left None)."""
    conf, labels = P.max(1)
    out = {
        "col": P.sum(0, dtype=torch.float64).div_(fit.n_total).cpu(),
        "centre_sums": _left(P.T, Q).double().cpu(),
        "hard_sums": None,
        "change": None,
        "parts": {part.index: (labels.cpu(), conf.cpu())},
    }
    if fit.assignment == "hard":
        hard = torch.zeros(P.shape[1], Q.shape[1], dtype=torch.float64, device=P.device)
        out["hard_sums"] = hard.index_add_(0, labels, _formed(Q).double()).cpu()
    return out


def part_stats(part: Part, fit: FitSpec, rnd: RoundSpec, g: torch.Tensor) -> dict:
    r"""End-of-round sums of this chunk's plan for the final class potential ``g``.

    Returns
    -------
    dict with
        ``col`` (K,) float64: :math:`\sum_i P_{ik} / N`;
        ``centre_sums`` (K, d_q) float64: :math:`P^\top Q` (rows of P summing to one);
        ``hard_sums`` (K, d_q) float64 or None: the same for the one-hot argmax plan;
        ``change`` float or None: :math:`\sum_{ik} |P_{ik} - P^{\text{prev}}_{ik}|`;
        ``parts`` {index: (labels int64 (n_rows,), confidence float32 (n_rows,))}.
    """
    dev = _device(fit)
    features = _read(part, fit, dev)
    T, w, _ = _current(part, fit, rnd, g, dev, features)
    P = _plan(T, w)
    del T
    _, Q, S_rows = features
    out = _plan_sums(part, fit, P, Q)
    st = _STORE.get((fit.token, part.index))
    if rnd.prev_centres is not None:
        if st is not None and st.prev_round == rnd.round - 1 and st.prev_plan is not None:
            prev = st.prev_plan
        else:
            prev = _plan(_tile(Q, S_rows, fit, rnd.prev_centres, rnd.prev_g, dev), None)
        out["change"] = float((P - prev).abs_().sum(dtype=torch.float64))
        del prev
    if part.keep_previous and st is not None:
        st.prev_plan, st.prev_round = P, rnd.round
    return out


def part_query_moments(part: Part, fit: FitSpec) -> torch.Tensor:
    r""":func:`gpua.projection.query_moments` of the chunk's (whitened) query, float64 of shape (d_q + 1, d_q + 1)."""
    _, Q, _ = _read(part, fit, _device(fit))
    return query_moments(Q).cpu()


def part_query_vlm_cross(part: Part, fit: FitSpec) -> torch.Tensor:
    r""":func:`gpua.procrustes.query_vlm_cross` of the chunk's (whitened) query and its VLM rows, float64 of shape (d_q, d_vlm)."""
    if fit.score_map is not None:
        raise GPUAError("part_query_vlm_cross reads the VLM rows: pass the fit spec of the first mining.")  # pragma: no cover - internal
    _, Q, X = _read(part, fit, _device(fit))
    return query_vlm_cross(Q, X).cpu()


def part_projected_stats(part: Part, fit: FitSpec, projection: PlanProjection) -> dict:
    r""":func:`part_stats`'s sums for the projected plan :func:`gpua.projection.projected_plan` of the chunk's query (``change`` None)."""
    _, Q, _ = _read(part, fit, _device(fit))
    return _plan_sums(part, fit, projected_plan(Q, projection), Q)


def part_final(part: Part, fit: FitSpec, W: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    r"""Predictions of the fitted map on this chunk, and each prototype's top-``k`` cosines.

    Returns
    -------
    pred : int64 tensor of shape (n_rows,)
        :math:`\arg\max_k \cos(Q_i W, Y_k)`.
    top : tensor of shape (n_classes, min(k, n_rows)) or None (``k = 0``)
        For CSLS radii (:func:`gpua.hubness.neighbourhood_radius` over the whole pool).
    """
    dev = _device(fit)
    _, Q, _ = _read(part, fit, dev)
    sims = mapped_cosines(Q, W.to(dev), fit.Y.to(dev))
    top = None
    if k:
        top = sims.T.topk(min(k, sims.shape[0]), dim=1).values.cpu()
    return sims.argmax(1).cpu(), top


def sum_tensors(results: list[torch.Tensor]) -> torch.Tensor:
    """Sum of same-shaped tensors, in list order (the merge of :func:`part_init_sums`)."""
    out = results[0].clone()
    for r in results[1:]:
        out += r
    return out


def merge_stats(results: list[dict]) -> dict:
    """Sum the :func:`part_stats` dicts of several chunks (labels kept per chunk index)."""
    out = {"col": None, "centre_sums": None, "hard_sums": None, "change": None, "parts": {}}
    for r in results:
        for key in ("col", "centre_sums", "hard_sums", "change"):
            if r[key] is not None:
                out[key] = r[key] if out[key] is None else out[key] + r[key]
        out["parts"].update(r["parts"])
    return out

