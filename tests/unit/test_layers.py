"""The import-rule lint (scripts/layers.py) passes on the product and catches each broken rule."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).parent.parent.parent / "scripts" / "layers.py"


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("layers_lint", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["layers_lint"] = module
    spec.loader.exec_module(module)
    return module


layers = load()


def test_the_product_follows_the_rules_and_its_diagram_is_current() -> None:
    assert layers.main(["layers.py", "check"]) == 0


BASE = {
    "__init__.py": "",
    "config.py": "",
    "app.py": "from kube_router.controllers.a import controller\n",
    "controllers/__init__.py": "",
    "controllers/a/__init__.py": "",
    "controllers/a/controller.py": "from kube_router import config\n",
    "controllers/b/__init__.py": "",
    "controllers/b/controller.py": "",
    "dataplane/__init__.py": "",
    "dataplane/exec.py": "",
    "k8s/__init__.py": "",
}


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        ({}, None),
        (
            {"config.py": "def f():\n    from kube_router import app\n"},
            "imports a higher layer",
        ),
        (
            {"config.py": "import kube_router.app\n", "app.py": "import kube_router.config\n"},
            "cycle",
        ),
        (
            {"controllers/a/controller.py": "from kube_router.controllers.b import controller\n"},
            "controllers never import each other",
        ),
        ({"dataplane/__init__.py": "from kube_router import k8s\n"}, "side by side"),
        (
            {
                "controllers/a/compile.py": "from kube_router.controllers.a import helper\n",
                "controllers/a/helper.py": "import subprocess\n",
            },
            "a compile module reaches I/O (subprocess through kube_router.controllers.a.helper)",
        ),
        (
            {"controllers/a/compile.py": "import socket\ns = socket.socket()\n"},
            "a compile module reaches I/O (socket.socket)",
        ),
        ({"controllers/a/compile.py": "import socket\nTCP = socket.IPPROTO_TCP\n"}, None),
        ({"cli.py": 'import importlib\nimportlib.import_module("kube_router_lab.x")\n'}, "the lab"),
        ({"cli.py": "from kube_router_lab import demo\n"}, "the lab"),
        (
            {
                "dataplane/x.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                "    from kube_router.controllers.a import controller\n"
            },
            "imports a higher layer",
        ),
    ],
)
def test_each_rule_is_caught(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: dict[str, str], expected: str | None
) -> None:
    root = tmp_path / "kube_router"
    for name, text in {**BASE, **files}.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(layers, "PRODUCT", root)
    problems = layers.violations(layers.product_modules())
    if expected is None:
        assert problems == []
    else:
        assert any(expected in p for p in problems), problems


def test_long_files_and_functions_are_caught(tmp_path: Path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(60))
    path = tmp_path / "big.py"
    path.write_text(f"def f():\n{body}\n" + "#\n" * 450)
    problems = layers.size_problems([path])
    assert any("big.py: f is 61 lines" in p for p in problems), problems
    assert any("lines (at most 500)" in p for p in problems), problems
