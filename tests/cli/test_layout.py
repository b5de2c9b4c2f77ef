"""The command line sits on top of the library: the layering the package promises."""

from __future__ import annotations

import ast
from pathlib import Path

import vstream

PACKAGE = Path(vstream.__file__).parent


def _imports(path: Path) -> set[str]:
    """Absolute names of the vstream modules ``path`` imports."""
    module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if module.endswith(".__init__"):
        module = module.removesuffix(".__init__")
        package = module
    else:
        package = module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("vstream"))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                name = ".".join([*base, node.module] if node.module else base)
            else:
                name = node.module or ""
            if name.startswith("vstream"):
                found.add(name)
                found.update(f"{name}.{a.name}" for a in node.names)
    return found


def test_nothing_below_the_command_line_imports_it():
    offenders = {
        str(path.relative_to(PACKAGE)): sorted(n for n in _imports(path) if n.startswith("vstream.cli"))
        for path in PACKAGE.rglob("*.py")
        if "cli" not in path.relative_to(PACKAGE).parts and path.name != "__main__.py"
    }
    assert {k: v for k, v in offenders.items() if v} == {}


def test_the_common_module_imports_no_command():
    assert not {n for n in _imports(PACKAGE / "cli" / "common.py") if n.startswith("vstream.cli")}


def test_every_command_module_registers_its_subcommands():
    import importlib

    from vstream.cli import REGISTRARS

    registered = {(r.__module__, r.__name__) for r in REGISTRARS}
    for path in sorted((PACKAGE / "cli").glob("*.py")):
        if path.stem in ("__init__", "common"):
            continue
        module = importlib.import_module(f"vstream.cli.{path.stem}")
        registers = {n for n in vars(module) if n.startswith("register_") and getattr(module, n).__module__ == module.__name__}
        assert registers, f"{path.name} registers no command"
        assert {(module.__name__, n) for n in registers} <= registered, path.name


def test_the_checker_sees_an_upward_import(tmp_path: Path, monkeypatch):
    # The check above must be able to fail: a module importing the CLI is reported.
    fake = PACKAGE / "cli" / "common.py"
    text = fake.read_text()
    probe = tmp_path / "vstream" / "cli" / "common.py"
    probe.parent.mkdir(parents=True)
    probe.write_text(text + "\nfrom . import replay\n")
    monkeypatch.setattr(f"{__name__}.PACKAGE", tmp_path / "vstream")
    assert "vstream.cli.replay" in _imports(probe)
