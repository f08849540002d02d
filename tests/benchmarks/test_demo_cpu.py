"""benchmarks/demo_cpu.py: runs a demo from the given tree and prints its figures."""
from scripts import REPO, load_script


def test_it_measures_a_demo_of_a_tree(capsys):
    assert load_script("demo_cpu").main([str(REPO), "--demos", "hello", "--modes", "emulate,bt", "--runs", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and all("cpu min" in ln and "retired" in ln for ln in lines)
