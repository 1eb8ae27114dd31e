"""Batched non-negative lasso: for every row x of X, the w >= 0 that minimises

    0.5 * |A^T w - x|^2 + l1 * sum(w)

over a dictionary A [V, D] whose rows are the atoms (concept embeddings). SpLiCE's code (Bhalla et al. 2024, its
ADMM and its scikit-learn path alike) minimises |A^T w - x|^2 + λ * sum(w): twice this objective when λ = 2 * l1.
So SpLiCE's λ is 2 * l1 here, and its published λ = 0.25 is l1 = 0.125.

V is large (tens of thousands of words) and the answers are sparse (tens of atoms), so each image is solved on a
small working set and checked against all V atoms:
 1. the working set starts as the atoms most correlated with x;
 2. FISTA (with adaptive restart) solves the problem restricted to the set, on its Gram matrix;
 3. a polishing step solves the restricted optimality conditions exactly on the support that FISTA found, and
    keeps that answer where it is non-negative and optimal;
 4. the optimality conditions of every atom outside the set (A r <= l1 with r the residual) are checked; the
    atoms that break them join the set and the solve repeats.
The answer is the problem's exact optimum (to the tolerances below), whatever the working set was. The batch
shares its working-set size and its iteration count, so the last bits of that answer, and an atom of tiny weight
within the tolerance, could still follow the batch; `exact_row` then finishes each row alone (an active set in
float64 from the batch's support, in shapes of the row's own), so an image's weights are the same bits whatever
images it is batched with. Everything is deterministic: fixed
iteration limits, fixed tolerances, no randomness.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

START = 64  # atoms in the first working set
GROW = 64  # atoms added per round: this many, or as many as the set holds if that is more
ROUNDS = 12
ITERATIONS = 1000  # FISTA iterations per round, at most (the polishing step makes the answer exact)
TOL = 1e-6  # FISTA stops when no weight moves more than this (relative to the largest correlation)
KKT_TOL = 1e-5  # an atom outside the set violates optimality when its correlation with the residual exceeds l1 by more


@dataclass
class Solution:
    weights: torch.Tensor  # [B, K] float32, non-negative, sorted descending per row (zeros last)
    atoms: torch.Tensor  # [B, K] int64 atom index of each weight (meaningless where the weight is 0)
    rounds: int  # working-set rounds the batch needed
    violation: torch.Tensor  # [B] largest optimality violation left outside the set (<= KKT_TOL when solved)
    slack: torch.Tensor | None = None  # [B, V] every atom's A r - l1 at the answer (exact_row's first screen)


def _fista(gram: torch.Tensor, b: torch.Tensor, l1: float, w: torch.Tensor) -> torch.Tensor:
    """min 0.5 w'Gw - b'w + l1 sum(w), w >= 0, for each row; warm-started at w."""
    # Gershgorin's bound on the largest eigenvalue: a step of 1/L can never diverge.
    lipschitz = gram.abs().sum(-1).amax(-1).clamp(min=1e-12)[:, None]
    y, t = w.clone(), torch.ones_like(lipschitz)
    scale = b.abs().amax(-1, keepdim=True).clamp(min=1e-12)
    for _ in range(ITERATIONS):
        grad = torch.bmm(gram, y[:, :, None])[:, :, 0] - b
        w_new = (y - (grad + l1) / lipschitz).clamp(min=0)
        step = w_new - w
        # Restart the momentum of a row whose step points uphill (O'Donoghue and Candes, 2015).
        uphill = ((y - w_new) * step).sum(-1, keepdim=True) > 0
        t_new = (1 + torch.sqrt(1 + 4 * t * t)) / 2
        momentum = torch.where(uphill, torch.zeros_like(t), (t - 1) / t_new)
        y = w_new + momentum * step
        t = torch.where(uphill, torch.ones_like(t), t_new)
        w = w_new
        if bool((step.abs().amax(-1, keepdim=True) <= TOL * scale).all()):
            break
    return w


def _polish(gram: torch.Tensor, b: torch.Tensor, l1: float, w: torch.Tensor) -> torch.Tensor:
    """The exact optimum of the working-set problem, from the support FISTA found: solve G_SS w_S = b_S - l1 on
    the support (in float64), drop atoms whose weight comes out negative and solve again. A row takes the exact
    answer where it is optimal on the whole working set (every weight positive, no atom outside the support with
    a negative gradient beyond KKT_TOL); FISTA's answer otherwise. The exact answer does not depend on how far
    FISTA went, so a row's weights do not depend on the rows it was solved with."""
    k = w.shape[1]
    g64, b64 = gram.double(), b.double()
    eye = torch.eye(k, dtype=torch.float64, device=gram.device)
    on = w > 0
    exact = torch.zeros_like(b64)
    for _ in range(4):
        mask = on[:, :, None] & on[:, None, :]
        system = torch.where(mask, g64, eye * (~on[:, :, None]).double())
        # Cholesky says (rather than fails) when a support's Gram matrix is singular: more atoms than
        # dimensions, or two atoms alike. Such a row keeps FISTA's answer.
        factor, info = torch.linalg.cholesky_ex(system)
        solvable = info == 0
        factor = torch.where(solvable[:, None, None], factor, eye)
        rhs = torch.where(on, b64 - l1, torch.zeros_like(b64))
        exact = torch.cholesky_solve(rhs[:, :, None], factor)[:, :, 0]
        exact = torch.where(on & solvable[:, None], exact, torch.zeros_like(exact))
        negative = on & (exact <= 0)
        if not bool(negative.any()):
            break
        on = on & ~negative
    gradient = torch.bmm(g64, exact[:, :, None])[:, :, 0] - b64 + l1
    optimal = solvable & torch.isfinite(exact).all(-1) & ((exact > 0) | ~on).all(-1) & \
        ((gradient >= -KKT_TOL) | on).all(-1)
    return torch.where(optimal[:, None], exact.to(w.dtype), w)


@torch.no_grad()
def nonneg_lasso(atoms: torch.Tensor, x: torch.Tensor, l1: float, start: int = START, grow: int = GROW,
                 rounds: int = ROUNDS) -> Solution:
    """Solve for every row of x [B, D] over the dictionary `atoms` [V, D] (float32, same device)."""
    if l1 <= 0:
        raise ValueError("the l1 penalty must be positive")
    b_all = x.float() @ atoms.float().T  # [B, V]: every atom's correlation with its image
    n_atoms = atoms.shape[0]
    k = min(start, n_atoms)
    work = b_all.topk(k, dim=-1).indices  # [B, K]
    w = torch.zeros(x.shape[0], k, dtype=torch.float32, device=x.device)
    violation = torch.full((x.shape[0],), float("inf"), device=x.device)
    used = 0
    for used in range(1, rounds + 1):  # noqa: B007 - the count of rounds is reported
        sub = atoms[work].float()  # [B, K, D]
        gram = torch.bmm(sub, sub.transpose(1, 2))
        b = b_all.gather(1, work)
        w = _polish(gram, b, l1, _fista(gram, b, l1, w))
        residual = x.float() - torch.bmm(w[:, None, :], sub)[:, 0]
        screen = residual @ atoms.float().T - l1  # [B, V]: > 0 means the atom should be in use
        slack = screen.clone().scatter_(1, work, float("-inf"))
        violation = slack.amax(-1).clamp(min=0)
        if not bool((violation > KKT_TOL).any()) or work.shape[1] >= n_atoms:
            break
        # The set at least doubles, so a dense answer takes a few rounds rather than many.
        extra = slack.topk(min(max(grow, work.shape[1]), n_atoms - work.shape[1]), dim=-1).indices
        work = torch.cat([work, extra], 1)
        w = torch.cat([w, torch.zeros_like(extra, dtype=w.dtype)], 1)
    order = w.argsort(dim=-1, descending=True, stable=True)
    return Solution(w.gather(1, order), work.gather(1, order), used, violation, screen)


SCREEN = 1e-4  # atoms whose float32 slack is above -SCREEN are checked again in float64
EXACT_TOL = 1e-10  # an atom outside the support joins it when its float64 slack exceeds this


@torch.no_grad()
def exact_row(atoms: torch.Tensor, x: torch.Tensor, l1: float, weights: torch.Tensor,
              chosen: torch.Tensor, screen: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """One row's exact optimum, from its batched answer (`weights` over `chosen`, a row of nonneg_lasso's
    Solution), with the row's own atoms and shapes alone, so that it depends on the row only.

    Active set in float64: solve G_SS w = A_S x - l1 on the support, drop atoms whose weight is not positive,
    add every atom outside whose slack A_j r - l1 is positive, until neither happens. The batched answer's support
    is only where it starts: within KKT_TOL, the batch could leave out an atom of tiny weight (or keep one), and the
    batch decided which. Returns (weights, atoms), largest weight first; a row that does not settle keeps its
    batched answer.

    `screen`: the row's slack at the batched answer (Solution.slack) where the batch reached its optimum, which
    spares the first round a pass over the whole dictionary (a [V, D] read per image). It only proposes atoms to
    check in float64: the batched and the exact residual then differ by far less than SCREEN, so an atom it leaves
    out could not join."""
    on = weights > 0
    kept = (weights[on], chosen[on])
    support = chosen[on].sort().values
    x64 = x.double()
    for _ in range(ROUNDS):
        w = torch.zeros(0, dtype=torch.float64, device=x.device)
        for _ in range(support.numel() + 1):
            if support.numel() == 0:
                break
            a = atoms[support].double()
            factor, info = torch.linalg.cholesky_ex(a @ a.T)
            if int(info) != 0:
                return _sorted(*kept)
            w = torch.cholesky_solve((a @ x64 - l1)[:, None], factor)[:, 0]
            if bool((w > 0).all()):
                break
            support = support[w > 0]
        residual = x64 - (w @ atoms[support].double() if support.numel() else 0)
        if screen is None:
            screen = atoms @ residual.float() - l1
        near = (screen > -SCREEN).nonzero()[:, 0]
        screen = None  # later rounds (rare) screen against their own residual
        near = near[~torch.isin(near, support)]
        join = near[(atoms[near].double() @ residual - l1) > EXACT_TOL]
        if join.numel() == 0:
            if not bool(torch.isfinite(w).all()):
                return _sorted(*kept)
            return _sorted(w.float(), support)
        support = torch.cat([support, join]).sort().values
    return _sorted(*kept)


def _sorted(weights: torch.Tensor, atoms: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    order = weights.argsort(descending=True, stable=True)
    return weights[order], atoms[order]
