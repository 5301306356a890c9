"""The path and valley phases of a trial (permsym_core.study._Trial, passed as `t`): the traced paths
theta* -> permutation point -> P_ij theta*, all relaxed in one batch (permsym_core.strings), the valleys at the
permutation points of irreducible reduced points (permsym_core.valleys), and one minimum-to-permuted-minimum path
per layer whose first leg is a relaxed half from theta* or, where that climbs above the point, a saddle's
measured descent leg (permsym_core.descent).
"""
from __future__ import annotations

import time

import numpy as np
import torch

from . import surgery
from .canonical import DEDUP_PARAM_RTOL, orient, same_loss
from .paths import PATH_PRECONDITIONER, PATH_REFRESH, path_record
from .strings import trace_halves
from .valleys import build_valley, permuted_minimum_path

VALLEY_POINTS = 2          # irreducible reduced points per (layer, order) whose valleys a trial builds
DESCENT_TRIES = 2          # saddles per layer whose descent leg is tried for the permuted-minimum path
DESCENT_DIRECTIONS = 2     # unstable directions tried per saddle (both signs each; a first-order saddle has one)
DESCENT_MAX_ITER = 1000    # damped Newton steps per leg (the (3, 3) teacher's seed 4 needs ~600 to reach theta*)


# 7. paths ---------------------------------------------------------------------------------------------


def trace_paths(t) -> None:
    """Every traced path starts at theta*: all of them are relaxed in one batch (permsym_core.strings)."""
    t0 = time.perf_counter()
    items = sorted(t.pair_points.items())
    t.phase("paths", 0, len(items))
    halves = (trace_halves(t.landscape, t.theta_star, torch.stack([p for _, p in items]),
                           (max(t.cfg.path_points, 3) + 1) // 2, relax=t.cfg.path_relax,
                           precond=PATH_PRECONDITIONER, refresh=PATH_REFRESH) if items else [])
    for n_done, (((layer, pair), theta_p), half) in enumerate(zip(items, halves)):
        if n_done:
            t.phase("paths", n_done, len(items))
        t.halves[(layer, pair)] = half
        rec = path_record(t.landscape, half, layer, pair)
        point = matching_point(t, layer, theta_p, rec["point_loss"])
        first = None if point is None else bool(point["index"] == 1 and point["saddle"])
        rec.update(point_index=None if point is None else point["index"], point_first_order=first,
                   highest_at_point_ok=None if not first else rec["highest_at_point"])
        t.paths.append(rec)
    t._tick("paths", t0)


def matching_point(t, layer: int, theta_p, loss: float) -> dict | None:
    """The recorded order-1 permutation point that theta_p is, up to permutation and sign (None if none)."""
    target = orient(t.spec, theta_p)
    tol = DEDUP_PARAM_RTOL * max(1.0, float(theta_p.abs().max()))
    for p in t.points:
        if p["layer"] != layer or p["order"] != 1 or not same_loss(p["loss"], loss, t.loss_scale):
            continue
        st = t.state[p["reduced_id"]]
        cand = orient(t.spec, surgery.duplicate(st.spec, st.theta, layer, p["neurons"], 0.5)[1])
        if surgery.distance_up_to_permutation(t.spec, target, cand) <= tol:
            return p
    return None


# 7b. valleys ------------------------------------------------------------------------------------


def build_valleys(t) -> None:
    """Valleys at the first VALLEY_POINTS irreducible reduced points of every (layer, order) (their
    permutation point duplicating the first K neurons), then one minimum-to-permuted-minimum path per
    layer with a traced path (preferring a first-order saddle whose path peaks at the point)."""
    from .permutation import duplicated_positions

    t0 = time.perf_counter()
    done: dict[tuple[int, int], int] = {}
    for rid, item in enumerate(t.reduced):
        key = (item["layer"], item["order"])
        if not item["converged"] or item["reducible"] or done.get(key, 0) >= VALLEY_POINTS:
            continue
        done[key] = done.get(key, 0) + 1
        st, layer, order = t.state[rid], item["layer"], item["order"]
        neurons = list(range(order))
        _, theta_p = surgery.duplicate(st.spec, st.theta, layer, neurons, 0.5)
        pairs = duplicated_positions(st.spec.widths[layer], neurons)
        items, group = build_valley(t.landscape, theta_p, layer, pairs)
        tag = {"order": order, "reduced": rid, "neurons": neurons}
        t.valleys += [{**tag, **it} for it in items]
        t.valley_groups.append({**tag, **group})
    rng = np.random.default_rng(t.cfg.seed)
    for layer in range(1, t.spec.depth):
        cands = [(i, p) for i, p in enumerate(t.paths) if p["layer"] == layer]
        if not cands:
            continue
        _, best = min(cands, key=lambda ip: (not ip[1].get("point_first_order"),
                                             not ip[1]["highest_at_point"],
                                             not ip[1]["relaxed_converged"], ip[0]))
        n = t.spec.widths[layer]
        sigma = rng.permutation(n)
        if n > 1 and list(sigma) == list(range(n)):
            sigma = np.roll(sigma, 1)
        pair = tuple(best["pair"])
        half = t.halves[(layer, pair)]
        rec = permuted_minimum_path(t.landscape, half.images, half.losses, layer, pair, sigma)
        rec.update(first_leg="relaxed", relaxed=best["relaxed"], relaxed_converged=best["relaxed_converged"],
                   point_first_order=best.get("point_first_order"), descent=None, starts_at_theta_star=True)
        from_theta_star = {k: rec[k] for k in ("pair", "max_rel_excess", "within_tol", "relaxed",
                                               "relaxed_converged")}
        if not rec["within_tol"]:
            rec = descent_permuted_path(t, layer, cands, sigma) or rec
        rec["from_theta_star"] = from_theta_star       # the relaxed attempt from theta* is kept, whatever replaced it
        t.permuted_paths.append(rec)
    t._tick("valleys", t0)


def saddle_descent(t, theta_p):
    """The trial's descent leg from the saddle theta_p down to a minimum (permsym_core.descent.descent_leg with
    the trial's gradient tolerance, DESCENT_DIRECTIONS, DESCENT_MAX_ITER, and a loss that may rise by the
    valley's tolerance of the point's loss and still count as falling)."""
    from .descent import descent_leg
    from .valleys import VALLEY_RTOL, loss_floor

    slack = VALLEY_RTOL * max(loss_floor(t.landscape), abs(t.landscape.loss(theta_p)))
    return descent_leg(t.landscape, theta_p, t.theta_star, grad_tol=t.cfg.grad_tol, slack=slack,
                       dense_max_params=t.cfg.dense_max_params, max_directions=DESCENT_DIRECTIONS,
                       max_iter=DESCENT_MAX_ITER)


def descent_permuted_path(t, layer: int, cands: list, sigma) -> dict | None:
    """Where the relaxed string from theta* climbs above the point: the permuted path whose first leg is the
    descent leg of a saddle of this layer (permsym_core.descent), first-order saddles first, at most
    DESCENT_TRIES of them (`saddle_descent`); the first that stays within tolerance and ends at theta* itself
    (up to a permutation), else the best tried (within tolerance first). Such a path
    starts at theta* only when `descent.reaches_theta_star`; the caller keeps the relaxed attempt from theta*
    beside it (`from_theta_star`)."""
    order = sorted((p for _, p in cands if (p.get("point_index") or 0) >= 1),
                   key=lambda p: (not p.get("point_first_order"), p["point_index"]))
    best = None
    for path in order[:DESCENT_TRIES]:
        pair = tuple(path["pair"])
        leg = saddle_descent(t, t.halves[(layer, pair)].images[-1])
        if leg is None:
            continue
        rec = permuted_minimum_path(t.landscape, leg.images, leg.losses, layer, pair, sigma)
        rec.update(first_leg="descent", relaxed=False, relaxed_converged=None,
                   point_first_order=path.get("point_first_order"), descent=leg.to_dict(),
                   starts_at_theta_star=leg.reaches)
        rank = (not rec["within_tol"], not leg.reaches, rec["max_rel_excess"])
        if best is None or rank < best[0]:
            best = (rank, rec)
        if rec["within_tol"] and leg.reaches:
            break
    return None if best is None else best[1]
