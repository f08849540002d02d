"""The CFG model: save/load, GraphML/DOT, merge, queries."""
import networkx as nx
import pytest
from scanhelp import BASE, Mem, asm

from scanner.cfg import UNRESOLVED
from scanner.scan import Scanner
from scanner.serialize import load_json, save_json, write_dot, write_graphml

CODE = """
    cli
    test eax, eax
    jz skip
    call dword ptr [esi]
skip:
    pushfd
    ret
second:
    mov eax, cr3
    jmp skip
"""


def _cfg(entries):
    code = asm(CODE)
    return Scanner(Mem(code).read).scan(entries), code


def _view(cfg):
    g = cfg.graph
    return (sorted((n, tuple(sorted((k, str(v)) for k, v in d.items())))
                   for n, d in g.nodes(data=True) if n != UNRESOLVED),
            sorted((str(u), str(v), d["kind"]) for u, v, d in g.edges(data=True)),
            cfg.entries, cfg.code_pages())


def test_json_round_trip(tmp_path):
    cfg, _ = _cfg([BASE])
    p = tmp_path / "cfg.json"
    save_json(cfg, str(p))
    back = load_json(str(p))
    assert _view(back) == _view(cfg)
    assert back.sensitive_sites() == cfg.sensitive_sites()
    assert back.pages.pages[BASE].flags == cfg.pages.pages[BASE].flags


def test_load_rejects_other_files(tmp_path):
    p = tmp_path / "x.json"
    p.write_text('{"format": "something"}')
    with pytest.raises(ValueError, match="not a bt-cfg file"):
        load_json(str(p))


def test_graphml_and_dot(tmp_path):
    cfg, _ = _cfg([BASE])
    write_graphml(cfg, str(tmp_path / "g.graphml"))
    g = nx.read_graphml(str(tmp_path / "g.graphml"))
    assert set(g.nodes) == {f"{n:#x}" if n != UNRESOLVED else n for n in cfg.graph.nodes}
    assert g.nodes[f"{BASE:#x}"]["sensitive"].startswith(f"{BASE:#x}:cli:interrupt")
    write_dot(cfg, str(tmp_path / "g.dot"))
    text = (tmp_path / "g.dot").read_text()
    assert text.startswith("digraph cfg {") and '"unresolved"' in text and "cond-jump" in text


def test_merge_equals_one_scan_of_both_entries():
    both, code = _cfg([BASE])
    second = BASE + code.index(bytes.fromhex("0f20d8"))
    both = Scanner(Mem(code).read).scan([BASE, second])
    a, _ = _cfg([BASE])
    b, _ = _cfg([second])
    a.merge(b)
    assert _view(a)[:2] == _view(both)[:2]
    assert set(a.code_pages()) == set(both.code_pages())


def test_queries():
    cfg, code = _cfg([BASE])
    skip = BASE + code.index(b"\x9c")
    assert cfg.block_containing(BASE + 1) == BASE
    assert cfg.block_containing(skip) == skip
    assert cfg.is_scanned(BASE + 1) and not cfg.is_scanned(BASE + 2)
    assert skip in cfg.branch_targets_in(BASE, BASE + len(code))
    with pytest.raises(KeyError):
        cfg.block(UNRESOLVED)
    st = cfg.stats()
    assert st["sensitive"] == {"interrupt": 1, "sensitive-unprivileged": 1}
    assert st["unresolved"] == 1
