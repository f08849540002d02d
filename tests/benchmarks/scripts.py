"""Loading a benchmarks/ script as a module (the scripts are not a package)."""
import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def script_path(name: str) -> Path:
    return REPO / "benchmarks" / f"{name}.py"


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, script_path(name))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
