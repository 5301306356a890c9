"""A trial record as a readable plain-text table (what `permsym trial` prints without --json)."""
from __future__ import annotations


def _f(x, fmt=".3g") -> str:
    return "-" if x is None else format(x, fmt)


def format_record(r: dict) -> str:
    c, m = r["config"], r["minimum"]
    lines = [
        f"trial {r['trial_key']}: task {c['task']}, widths {c['widths']}, {c['activation']}, seed {c['seed']}, "
        f"P = {m['n_params']}, loss: {r['loss_convention']}",
        f"minimum: loss {_f(m['loss'], '.6e')}, |grad|_inf {_f(m['grad_inf'])}, converged {m['converged']}, "
        f"index {_f(m['index'], 'd')}, n_zero {_f(m['n_zero'], 'd')}",
    ]
    if r.get("penalty"):
        lines.append(f"penalty: weight_decay {r['penalty']['weight_decay']:g} (L2 on every parameter; losses below "
                     f"include it, permsym_core.penalty); the minimum's data loss is {_f(m.get('data_loss'), '.6e')}")
    if r.get("failure"):
        lines.append(f"FAILED: {r['failure']}")
        return "\n".join(lines)
    lines.append(f"reduced critical points ({len(r['reduced'])}):")
    lines.append(f"  {'id':>3} {'layer':>5} {'K':>2} {'loss':>13} {'|grad|':>8} {'conv':>5} {'index':>5}  from pairs")
    for i, x in enumerate(r["reduced"]):
        lines.append(f"  {i:>3} {x['layer']:>5} {x['order']:>2} {_f(x['loss'], '.6e'):>13} {_f(x['grad_inf']):>8} "
                     f"{str(x['converged']):>5} {_f(x['index'], 'd'):>5}  {x['from_pairs']}")
    lines.append(f"permutation points ({len(r['points'])}):")
    lines.append(f"  {'layer':>5} {'K':>2} {'red':>3} {'neurons':>8} {'|grad|':>8} {'crit':>5} {'index':>5} "
                 f"{'n_zero':>6} {'tau':>8} {'gap':>8} {'amb':>5} {'FA':>3} {'plateau':>7}  lowest eigenvalues")
    for p in r["points"]:
        low = ", ".join(f"{v:.2e}" for v in p["lowest_eigenvalues"][:4])
        lines.append(f"  {p['layer']:>5} {p['order']:>2} {p['reduced_id']:>3} {str(p['neurons']):>8} "
                     f"{_f(p['grad_inf']):>8} {str(p['critical']):>5} {p['index']:>5} {p['n_zero']:>6} "
                     f"{_f(p['tau']):>8} {_f(p['gap']):>8} {str(p['ambiguous']):>5} {_f(p['fa_index'], 'd'):>3} "
                     f"{_f(p['plateau_dim'], 'd'):>7}  {low}")
    if r["paths"]:
        lines.append("paths theta* -> permutation point -> P_ij theta*:")
        for p in r["paths"]:
            lines.append(f"  layer {p['layer']} pair {p['pair']}: barrier {_f(p['barrier'], '.4e')} "
                         f"({len(p['losses'])} points)")
    lines.append("counts (log10, scaled by multiplicity) against the lower bound:")
    lines.append(f"  {'layer':>5} {'K':>2} {'found':>5} {'crit':>5} {'saddle':>6} {'1st':>4} {'log10 bound':>11} "
                 f"{'log10 crit':>10} {'log10 saddle':>12} {'log10 1st':>9}")
    for x in r["counts"]:
        lines.append(f"  {x['layer']:>5} {x['order']:>2} {x['n_found']:>5} {x['n_critical']:>5} {x['n_saddle']:>6} "
                     f"{x['n_first_order']:>4} {_f(x['log10_bound'], '.3f'):>11} {_f(x['log10_critical'], '.3f'):>10} "
                     f"{_f(x['log10_saddle'], '.3f'):>12} {_f(x['log10_first_order'], '.3f'):>9}")
    lines.append(f"log10 equivalent minima: {_f(r['log10_minima'], '.3f')}; timings (s): "
                 + ", ".join(f"{k} {v:.2f}" for k, v in r["timings"].items()))
    return "\n".join(lines)
