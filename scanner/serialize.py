"""Saving and loading a CFG: JSON (lossless), GraphML (Gephi/yEd) and DOT (Graphviz).

GraphML and DOT are for looking at; only JSON loads back.
"""
from __future__ import annotations

import json

import networkx as nx

from scanner.cfg import CFG, UNRESOLVED
from scanner.pages import PageMap

FORMAT = "bt-cfg"
VERSION = 1


def _key(n) -> str:
    return n if n == UNRESOLVED else f"{n:#x}"


def _unkey(s: str):
    return s if s == UNRESOLVED else int(s, 16)


def to_dict(cfg: CFG) -> dict:
    nodes = []
    for n, d in sorted(cfg.graph.nodes(data=True), key=lambda x: (isinstance(x[0], str), x[0])):
        if n == UNRESOLVED:
            continue
        rec = {"id": _key(n), "kind": d["kind"], "start": d["start"], "end": d["end"]}
        if d["kind"] == "bad":
            rec["reason"] = d["reason"]
        rec["insns"] = [[a, s, m, o, b.hex()] for a, s, m, o, b in d["insns"]]
        rec["sensitive"] = [list(x) for x in d["sensitive"]]
        nodes.append(rec)
    edges = []
    for u, v, d in cfg.graph.edges(data=True):
        edges.append({"src": _key(u), "dst": _key(v), **d})
    edges.sort(key=lambda e: (e["src"], e["dst"]))
    return {
        "format": FORMAT, "version": VERSION,
        "entries": {f"{a:#x}": labels for a, labels in sorted(cfg.entries.items())},
        "pending": cfg.pending,
        "nodes": nodes, "edges": edges,
        "pages": cfg.pages.to_dict(),
        "info": cfg.info,
    }


def from_dict(d: dict) -> CFG:
    if d.get("format") != FORMAT:
        raise ValueError(f"not a {FORMAT} file (format field is {d.get('format')!r})")
    if d.get("version") != VERSION:
        raise ValueError(f"unsupported {FORMAT} version {d.get('version')!r}")
    cfg = CFG()
    for rec in d["nodes"]:
        n = _unkey(rec["id"])
        if rec["kind"] == "bad":
            cfg.add_bad(n, rec["reason"])
        else:
            insns = [(a, s, m, o, bytes.fromhex(b)) for a, s, m, o, b in rec["insns"]]
            cfg.add_block(n, rec["end"], insns, [tuple(x) for x in rec["sensitive"]])
    for e in d["edges"]:
        attrs = {k: v for k, v in e.items() if k not in ("src", "dst")}
        cfg.graph.add_edge(_unkey(e["src"]), _unkey(e["dst"]), **attrs)
    for a, labels in d["entries"].items():
        for lab in labels:
            cfg.add_entry(int(a, 16), lab)
    cfg.pending = list(d.get("pending", []))
    cfg.pages = PageMap.from_dict(d.get("pages", {}))
    cfg.info = dict(d.get("info", {}))
    cfg.reindex()
    return cfg


def save_json(cfg: CFG, path: str) -> None:
    with open(path, "w") as f:
        json.dump(to_dict(cfg), f, separators=(",", ":"))


def load_json(path: str) -> CFG:
    with open(path) as f:
        return from_dict(json.load(f))


def _flat_graph(cfg: CFG) -> nx.DiGraph:
    """A copy with string ids and scalar attributes only (what GraphML allows)."""
    g = nx.DiGraph()
    for n, d in cfg.graph.nodes(data=True):
        if n == UNRESOLVED:
            g.add_node(UNRESOLVED, kind="unresolved", label="unresolved")
            continue
        text = "\n".join(f"{a:08x}  {m} {o}".rstrip() for a, _s, m, o, _b in d["insns"])
        attrs = {"kind": d["kind"], "start": f"{d['start']:#x}", "end": f"{d['end']:#x}",
                 "ninsns": len(d["insns"]),
                 "sensitive": ",".join(f"{a:#x}:{name}:{k}" for a, name, k in d["sensitive"]),
                 "label": f"{n:#x}", "text": text}
        if d["kind"] == "bad":
            attrs["reason"] = d["reason"]
        if n in cfg.entries:
            attrs["entry"] = ",".join(cfg.entries[n])
        g.add_node(_key(n), **attrs)
    for u, v, d in cfg.graph.edges(data=True):
        g.add_edge(_key(u), _key(v), **{k: (f"{x:#x}" if isinstance(x, int) and k != "far" else str(x))
                                        for k, x in d.items()})
    return g


def write_graphml(cfg: CFG, path: str) -> None:
    nx.write_graphml(_flat_graph(cfg), path)


_EDGE_STYLE = {"fallthrough": "solid", "jump": "bold", "cond-jump": "dashed", "call": "bold",
               "return": "dotted", "indirect": "bold", "unresolved": "dotted"}
_EDGE_COLOR = {"call": "blue", "indirect": "purple", "unresolved": "red", "return": "gray"}


def _dot_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\l") + '"'


def write_dot(cfg: CFG, path: str) -> None:
    """Graphviz text written directly (no pydot dependency)."""
    out = ["digraph cfg {", '  node [shape=box fontname="monospace" fontsize=9];']
    for n, d in sorted(cfg.graph.nodes(data=True), key=lambda x: (isinstance(x[0], str), x[0])):
        if n == UNRESOLVED:
            out.append('  "unresolved" [shape=octagon color=red];')
            continue
        if d["kind"] == "bad":
            out.append(f"  {_dot_str(_key(n))} [label={_dot_str(f'{n:#x} BAD: ' + d['reason'])} "
                       "color=red];")
            continue
        sens = {a for a, _, _ in d["sensitive"]}
        lines = [f"{a:08x}  {m} {o}".rstrip() + ("  <== sensitive" if a in sens else "")
                 for a, _s, m, o, _b in d["insns"]]
        color = ' color=orange' if sens else ""
        out.append(f"  {_dot_str(_key(n))} [label={_dot_str(chr(10).join(lines) + chr(10))}{color}];")
    for u, v, d in cfg.graph.edges(data=True):
        k = d["kind"]
        out.append(f"  {_dot_str(_key(u))} -> {_dot_str(_key(v))} [label={_dot_str(k)} "
                   f"style={_EDGE_STYLE.get(k, 'solid')} color={_EDGE_COLOR.get(k, 'black')}];")
    out.append("}")
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
