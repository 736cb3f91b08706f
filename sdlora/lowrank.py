"""Truncated SVD of a ΔW taken in its factors' space, without the dense matrix (docs/formats.md §4.1).

Torch only. Every ΔW sdlora reads has a known structure, written here as the 2-D matrix ΔW₂ = ΔW reshaped
to (out, in·kh·kw) (the reshape keeps the memory order, so a flattened and a 4-D conv agree):
* LoRA / LoCon: ΔW₂ = (scale·up) @ down, rank r; Tucker: up @ (mid ×₂ down), still rank r.
* LoHa: (A₁B₁) ⊙ (A₂B₂) = KR(A₁, A₂) @ KR(B₁ᵀ, B₂ᵀ)ᵀ with KR the row-wise Khatri-Rao product: rank <= r₁·r₂.
* LoKr: kron(W₁, W₂); its SVD is the Kronecker product of the factors' SVDs (U₁⊗U₂, S₁⊗S₂, V₁⊗V₂),
  sorted by singular value, so the kept pairs are the ones with the most energy.
A product a @ b of rank k is decomposed exactly by a QR of each factor and the SVD of the small k x k core,
at a cost of O((out + in)·k²) instead of O(out·in·min(out, in)). Where no structure exists (a full diff,
the difference of two models) the dense matrix is decomposed: exactly when it is small, else by
`torch.svd_lowrank` with oversampling when the target rank is known. The randomized result is an
orthogonal projection of ΔW, so its residual ‖ΔW - ΔWₖ‖² = ‖ΔW‖² - Σ sᵢ² is known exactly and reported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from math import prod

import torch
from torch import Tensor

from sdlora.delta import Factors

# randomized SVD only for matrices whose short side is at least this and a few times the sketch size:
# below it a full SVD takes milliseconds, and an exact result is worth more
RANDOMIZED_MIN_SIDE = 512
OVERSAMPLE = 8
POWER_ITERATIONS = 4


@dataclass
class Svd:
    """ΔW₂ ≈ u · diag(s) · vh, s descending. `total` is ‖ΔW₂‖²_F, so the energy share of a prefix of s is
    right even when s was cut short (randomized); `randomized` says whether it was."""

    u: Tensor
    s: Tensor
    vh: Tensor
    total: float
    randomized: bool = False


def svd_of_product(a: Tensor, b: Tensor, limit: int | None = None) -> Svd:
    """Exact SVD of a @ b (a (out, k), b (k, in)) from the factors: QR of each, SVD of the k x k core.
    With `limit`, the singular vectors are built for the first `limit` values only (s is all there).

    When k reaches the short side of the product there is nothing to gain: the product is decomposed.
    """
    if a.shape[1] >= min(a.shape[0], b.shape[1]):
        return svd_of_matrix(a @ b)
    q_a, r_a = torch.linalg.qr(a)  # (out, k), (k, k)
    q_b, r_b = torch.linalg.qr(b.T)  # (in, k), (k, k)
    u, s, vh = torch.linalg.svd(r_a @ r_b.T)
    return Svd(q_a @ u[:, :limit], s, vh[:limit] @ q_b.T, float((s * s).sum()))


def svd_of_matrix(matrix: Tensor, rank: int | None = None) -> Svd:
    """SVD of a dense (out, in) matrix: randomized to `rank` (+ oversampling) for a large one when `rank` is
    given, else exact (float64 for small matrices, float32 for large ones, for speed)."""
    total = float(matrix.double().square().sum())
    sketch = None if rank is None else rank + OVERSAMPLE
    if sketch is not None and min(matrix.shape) >= max(RANDOMIZED_MIN_SIDE, 4 * sketch):
        u, s, v = torch.svd_lowrank(matrix.double(), q=sketch, niter=POWER_ITERATIONS)
        return Svd(u, s, v.T, total, randomized=True)
    dtype = torch.float64 if matrix.numel() <= 4_000_000 else torch.float32
    u, s, vh = torch.linalg.svd(matrix.to(dtype), full_matrices=False)
    return Svd(u.double(), s.double(), vh.double(), total)


# ----- factors of each kind --------------------------------------------------------------------


def factors(module: Factors) -> tuple[Tensor, Tensor] | None:
    """(a, b) in float64 with ΔW₂ = a @ b for a LoRA / LoCon / Tucker / LoHa module, the module's scale folded
    into a; None for other kinds and for a module with a DoRA magnitude."""
    if "dora_scale" in module.tensors:
        return None
    t = {k: v.double() for k, v in module.tensors.items()}
    if module.kind == "lora":
        a, b = _lora_factors(t)
    elif module.kind == "loha":
        a, b = _loha_factors(t)
    else:  # LoKr goes through lokr_svd; a full diff has no factors
        return None
    return a * module.scale, b


def module_svd(module: Factors, limit: int | None = None) -> Svd | None:
    """Exact SVD of a module's scaled ΔW₂ from its factors; None where there are none (a full diff, DoRA,
    a LoKr whose both factors have kernels). With `limit`, a LoKr's singular vectors are built for the
    first `limit` values only (all of s is kept for the energy)."""
    if module.kind == "lokr" and "dora_scale" not in module.tensors:
        return lokr_svd(module, limit)
    pair = factors(module)
    return None if pair is None else svd_of_product(*pair)


def _lora_factors(t: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """up (out, r) and down (r, in·kh·kw); a Tucker core folded into down (docs/formats.md §2.5)."""
    down, up = t["down"], t["up"]
    rank = down.shape[0]
    up2, down2 = up.reshape(up.shape[0], rank), down.reshape(rank, -1)
    if "mid" in t:  # ΔW[i,j,k,l] = Σ up[i,n] mid[n,m,k,l] down[m,j]
        down2 = torch.einsum("nmkl,mj->njkl", t["mid"], down2).reshape(rank, -1)
    return up2, down2


def _pair(a: Tensor, b: Tensor, tucker: Tensor | None) -> tuple[Tensor, Tensor]:
    """(left, right) of one LoHa/LoKr product a @ b, or of its Tucker form (docs/formats.md §2.6):
    einsum('ijkl,jr,ip->prkl', t, b, a) = aᵀ @ einsum('ijkl,jr->irkl', t, b)."""
    if tucker is None:
        return a, b.reshape(b.shape[0], -1)
    return a.T, torch.einsum("ijkl,jr->irkl", tucker, b).reshape(tucker.shape[0], -1)


def _loha_factors(t: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
    """Khatri-Rao factors of (A₁B₁) ⊙ (A₂B₂): a[i,(p,q)] = A₁[i,p]·A₂[i,q], b[(p,q),j] = B₁[p,j]·B₂[q,j]."""
    a1, b1 = _pair(t["w1a"], t["w1b"], t.get("t1"))
    a2, b2 = _pair(t["w2a"], t["w2b"], t.get("t2"))
    a = (a1[:, :, None] * a2[:, None, :]).reshape(a1.shape[0], -1)
    b = (b1[:, None, :] * b2[None, :, :]).reshape(-1, b1.shape[1])
    return a, b


def lokr_svd(module: Factors, limit: int | None = None) -> Svd | None:
    """SVD of scale·kron(W₁, W₂) as the Kronecker product of the factors' SVDs, pairs sorted by energy.

    kron(W₁, W₂₂) equals ΔW₂ when W₁ has no kernel (a 1x1 W₁ is unsqueezed to W₂'s rank, and a conv W₂ is
    flattened to (c, d·kh·kw)); None otherwise (both factors with kernels; the caller goes dense).
    """
    t = {k: v.double() for k, v in module.tensors.items() if k != "dora_scale"}
    first = _lokr_part_svd(t, 1)
    second = _lokr_part_svd(t, 2)
    if first is None or second is None:
        return None
    s = torch.outer(first.s, second.s).flatten() * abs(module.scale)
    order = torch.argsort(s, descending=True)
    built = order[:limit]
    left, right = built // second.s.numel(), built % second.s.numel()
    u = (first.u[:, left][:, None, :] * second.u[:, right][None, :, :]).reshape(-1, built.numel())
    vh = (first.vh[left][:, :, None] * second.vh[right][:, None, :]).reshape(built.numel(), -1)
    if module.scale < 0:
        u = -u
    return Svd(u, s[order], vh, float((s * s).sum()))


def _lokr_part_svd(t: dict[str, Tensor], index: int) -> Svd | None:
    """SVD of LoKr factor `index` as a 2-D matrix (W₂ flattened); None for a W₁ with a kernel."""
    full = t.get(f"w{index}")
    if full is not None:
        if index == 1 and prod(full.shape[2:]) != 1:
            return None
        return svd_of_matrix(full.reshape(full.shape[0], -1))
    return svd_of_product(*_pair(t[f"w{index}a"], t[f"w{index}b"], t.get(f"t{index}")))


# ----- truncation -------------------------------------------------------------------------------


def choose_rank(svd: Svd, rank: int | None, energy: float | None) -> tuple[int, float]:
    """(rank to keep, energy kept = Σ kept sᵢ² / ‖ΔW‖²) for a target `rank` or `energy`."""
    power = svd.s.double() ** 2
    if svd.total == 0.0 or power.numel() == 0:
        return 1, 1.0
    cumulative = torch.cumsum(power, 0) / svd.total
    if energy is not None:
        keep = int(torch.searchsorted(cumulative, torch.tensor(energy - 1e-12, dtype=cumulative.dtype))) + 1
    else:
        keep = rank
    keep = max(1, min(keep, int(svd.s.numel())))
    return keep, min(float(cumulative[keep - 1]), 1.0)


def sum_svd(parts: list[tuple[Factors, float]], dense: Callable[[int], Tensor], rank: int | None) -> Svd:
    """SVD of Σ weight·ΔW₂ over `parts`, from the factors when every part has them, else of the dense sum
    (`dense(i)` gives part i's ΔW₂), decomposed with `svd_of_matrix`. With factors, the part of highest
    rank gives an exact SVD and the others are added to it by one small update (`add_to_svd`)."""
    svds = [module_svd(module, rank if len(parts) == 1 else None) for module, _ in parts]
    if all(svd is not None for svd in svds):
        order = sorted(range(len(parts)), key=lambda i: -svds[i].s.numel())
        first = _weighted(svds[order[0]], parts[order[0]][1])
        if len(parts) == 1:
            return first
        rest = [(svds[i].u * (svds[i].s * parts[i][1]), svds[i].vh) for i in order[1:]]
        return add_to_svd(first, torch.cat([a for a, _ in rest], 1), torch.cat([b for _, b in rest], 0), rank)
    total = None
    for i, ((_, weight), svd) in enumerate(zip(parts, svds, strict=True)):
        delta = ((svd.u * svd.s) @ svd.vh if svd is not None else dense(i).double()) * weight
        total = delta if total is None else total + delta
    return svd_of_matrix(total, rank)


def add_to_svd(svd: Svd, a: Tensor, b: Tensor, limit: int | None = None) -> Svd:
    """Exact SVD of u·diag(s)·vh + a @ b (u, vhᵀ orthonormal; a (out, k), b (k, in)); with `limit`, the
    singular vectors of the first `limit` values only (building all of them was most of the cost).

    Only the parts of a and bᵀ outside the known subspaces need a QR; the SVD is then that of a small
    (r + k)² core. This costs O((out + in)·r·k + (r + k)³), against O((out + in)·(r + k)²) for a QR of the
    concatenated factors.
    """
    r, k = svd.s.numel(), a.shape[1]
    if r + k >= min(a.shape[0], b.shape[1]):
        return svd_of_matrix((svd.u * svd.s) @ svd.vh + a @ b)
    c, d = svd.u.T @ a, svd.vh @ b.T  # (r, k) each: a's and bᵀ's components inside the subspaces
    q_a, r_a = torch.linalg.qr(a - svd.u @ c)
    q_b, r_b = torch.linalg.qr(b.T - svd.vh.T @ d)
    core = torch.cat([torch.cat([torch.diag(svd.s) + c @ d.T, c @ r_b.T], 1),
                      torch.cat([r_a @ d.T, r_a @ r_b.T], 1)], 0)
    u, s, vh = torch.linalg.svd(core)
    left, right = torch.cat([svd.u, q_a], 1), torch.cat([svd.vh, q_b.T], 0)
    return Svd(left @ u[:, :limit], s, vh[:limit] @ right, float((s * s).sum()))


def _weighted(svd: Svd, weight: float) -> Svd:
    """The SVD of weight·ΔW₂ from that of ΔW₂ (the sign goes into u, singular values stay >= 0)."""
    if weight == 1.0:
        return svd
    return Svd(svd.u * (1.0 if weight >= 0 else -1.0), svd.s * abs(weight), svd.vh, svd.total * weight * weight,
               svd.randomized)
