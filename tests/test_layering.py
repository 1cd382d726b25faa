"""The package's layers: no import cycles, the method core stays free of the tools built on it, and the
command-line entry points stay thin (``--help`` and early config errors come before torch is imported)."""

from __future__ import annotations

import ast
import subprocess
import sys
import time
from pathlib import Path

import pytest

import text2live

PACKAGE = Path(text2live.__file__).parent
ROOT = PACKAGE.parent

# The method: generator, CLIP guide, views, losses, data, the Lightning systems, NLA, metrics and their helpers.
CORE = (
    *(
        "generator",
        "clip_guide",
        "views",
        "draws",
        "optim",
        "losses",
        "data",
        "loader",
        "system",
        "video_system",
        "video_data",
    ),
    *("nla", "metrics", "io", "callbacks", "errors", "files", "config", "checkpoints"),
)
# What the core must never import: the layers built on it.
ABOVE_CORE = ("cli", "runs", "reporting", "build", "training", "render", "evaluate", "api", "atlas")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """Every text2live module ``path`` imports, at module level or inside a function."""
    found = set()
    this = module_name(path)
    package = this if path.name == "__init__.py" else this.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            names = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != this and name != "text2live":
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(path, set(mods)) for name, path in mods.items()}


def layer(module: str) -> str:
    return module.split(".")[1] if "." in module else ""


def test_the_import_graph_has_no_cycle():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt) :] + [nxt] if nxt in stack else [node, nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])


def test_the_core_never_imports_the_layers_above_it():
    edges = graph()
    assert {f"text2live.{name}" for name in CORE} <= set(edges), "CORE names a module that does not exist"
    wrong = [
        f"{module} imports {imported}"
        for module, imported_modules in edges.items()
        if layer(module) in CORE
        for imported in imported_modules
        if layer(imported) in ABOVE_CORE
    ]
    assert not wrong, wrong


def test_only_the_entry_points_import_the_cli_package():
    edges = graph()
    wrong = [
        f"{module} imports {imported}"
        for module, imported_modules in edges.items()
        if layer(module) != "cli"
        for imported in imported_modules
        if layer(imported) == "cli"
    ]
    plugins = ROOT / "hydra_plugins"
    for path in plugins.rglob("*.py"):
        if "text2live.cli" in path.read_text().replace('"text2live.cli.train"', ""):
            wrong.append(f"{path.relative_to(ROOT)} imports text2live.cli")
    assert not wrong, wrong


def test_every_module_belongs_to_a_known_layer():
    """A new module is placed on purpose: added to CORE or to the layers above it."""
    known = set(CORE) | set(ABOVE_CORE) | {"speed", "progress"}
    assert {layer(module) for module in modules() if module != "text2live"} <= known


def run_without_torch(code: str) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter; it prints whether torch ended up imported as its last line."""
    report = "print('torch' in sys.modules, file=sys.stderr)"
    wrapper = f"import sys\ntry:\n{code}\nexcept SystemExit:\n    pass\n{report}\n"
    return subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("command", ["train", "render", "eval", "table"])
def test_help_answers_without_importing_torch(command):
    started = time.perf_counter()
    result = run_without_torch(
        f"    sys.argv = ['t2l-{command}', '--help']\n    from text2live.cli.{command} import main\n    main()"
    )
    elapsed = time.perf_counter() - started
    print(f"t2l-{command} --help: {elapsed:.2f} s (interpreter start included)")
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower() or "t2l-" in result.stdout
    assert result.stderr.strip().splitlines()[-1] == "False", "torch was imported to print the help"


def test_an_unknown_key_is_refused_before_torch_is_imported():
    result = run_without_torch(
        "    sys.argv = ['t2l-train', 'experiment=golden_cat', 'lamda_structure=3']\n"
        "    from text2live.cli.train import main\n"
        "    main()"
    )
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("error: unknown config key 'lamda_structure'"), result.stderr
    assert lines[-1] == "False", "torch was imported before the override was checked"


def test_the_readme_layout_names_every_module():
    """README's Layout table lists every module and package of text2live (a new one is documented on purpose)."""
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("## Layout") :]
    layout = layout[: layout.index("\n## ", 1)]
    names = {layer(module) for module in modules() if module != "text2live"}
    missing = sorted(
        name
        for name in names
        if f"`text2live/{name}.py`" not in layout
        and f"`{name}.py`" not in layout
        and f"`text2live/{name}/`" not in layout
        and f"`{name}/`" not in layout
    )
    assert not missing, f"README's Layout table does not name: {missing}"
