"""The report's valley section (tracking.report): one trial per architecture, its valley segments and its
minimum-to-permuted-minimum path as PNGs, each caption saying where that path starts (`permuted_start_note`).
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from . import query as _query
from .figures import permuted_path_figure, save_png, valley_figure

VALLEY_PARAGRAPH = (
    "One trial per architecture (the first converged one with valleys): the loss along the equal-loss segments "
    "that realise generating transpositions of each hidden layer at a permutation point (flat at the point's "
    "loss to 1e-12 relative when the valley holds), and a path from a minimum through a permutation point, the "
    "valley and the permuted point to the permuted minimum (its highest loss is the point's when `within_tol`; "
    "docs/valleys.md). Each caption says where the path starts: at theta*, the trial's trained minimum, or, when "
    "no first leg from theta* stays below the point, at the minimum one of the layer's saddles descends to.")


def permuted_start_note(rec: dict) -> str:
    """Where each permuted path of a record starts: at theta* or, when no first leg from theta* stays below the
    point, at the minimum a saddle's descent reaches (its loss against theta*'s, and how far above the point the
    attempt from theta* rose): the path is a claim about that minimum, not about theta*. Records logged before
    `starts_at_theta_star` existed: a relaxed first leg starts at theta*, a descent one where it reached theta*."""
    theta_loss = (rec.get("minimum") or {}).get("loss")
    parts = []
    for p in rec.get("permuted_paths") or []:
        start = p.get("starts_at_theta_star")
        if start is None:
            reached = bool((p.get("descent") or {}).get("reaches_theta_star"))
            start = p.get("first_leg", "relaxed") != "descent" or reached
        above = "" if p.get("within_tol", True) else \
            f", and it rises {_num(p.get('max_rel_excess'))} x the point's loss above the point's loss"
        if start:
            parts.append(f"layer {p.get('layer')}: starts at theta*{above}")
            continue
        text = (f"layer {p.get('layer')}: starts at the minimum its saddle descends to, not at theta* "
                f"(loss {_num(p.get('start_loss'))} against theta*'s {_num(theta_loss)}{above})")
        tried = p.get("from_theta_star")
        if tried and tried.get("max_rel_excess") is not None:
            how = "relaxed" if tried.get("relaxed") else "straight"
            text += (f"; the {how} path from theta* rises {_num(tried['max_rel_excess'])} x the point's loss above "
                     "the point's loss")
        parts.append(text)
    return "; ".join(parts)


def _num(x) -> str:
    if x is None:
        return "n/a"
    x = float(x)
    return f"{x:.3g}" if 1e-2 <= abs(x) < 1e4 else f"{x:.2e}"


def valley_figures(rdf: pd.DataFrame, uri: str, out: Path, max_valley: int) -> list[tuple[str, str]]:
    """valley_<i>.png and permuted_path_<i>.png for up to max_valley architectures: (file name, caption)."""
    files: list[tuple[str, str]] = []
    if rdf.empty or max_valley <= 0:
        return files
    # at most 3 runs per architecture, of the first max_valley architectures: a report on 10,000 runs reads
    # a handful of records, not all of them
    arch_cols = ["task", "activation", "widths"]
    keyed = rdf.assign(_arch=rdf[arch_cols].astype(str).agg("|".join, axis=1))
    first = list(dict.fromkeys(keyed["_arch"]))[:max_valley]
    cand = keyed[keyed["_arch"].isin(first)].groupby("_arch", sort=False).head(3)
    recs = _query.records(list(cand["run_id"]), uri)
    seen: set = set()
    for rid, rec in recs.items():
        c = rec.get("config") or {}
        arch = (c.get("task"), c.get("activation"), tuple(c.get("widths") or ()))
        if arch in seen or not (rec.get("valleys") or rec.get("permuted_paths")) or len(seen) >= max_valley:
            continue
        seen.add(arch)
        label = f"{arch[0]} {arch[1]} widths {arch[2]} seed {c.get('seed')} (run `{rid}`)"
        for kind, fn, what in (("valley", valley_figure, "Valley segments"),
                               ("permuted_path", permuted_path_figure, "Minimum to permuted minimum")):
            fig = fn(rec)
            if fig is None:
                continue
            name = f"{kind}_{len(seen)}.png"
            save_png(fig, out / name)
            note = "" if kind == "valley" else permuted_start_note(rec)
            files.append((name, f"{what}: {label}" + (f". {note}" if note else "")))
    return files
