"""The repository stays clean: ruff, ruff format, snakemake --lint and snakefmt, as CI and reviewers expect."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=300)


def test_ruff_check_is_clean():
    result = run(sys.executable, "-m", "ruff", "check", ".")
    assert result.returncode == 0, result.stdout


def test_ruff_format_is_clean():
    result = run(sys.executable, "-m", "ruff", "format", "--check", ".")
    assert result.returncode == 0, result.stdout


@pytest.mark.integration
def test_snakemake_lint_is_clean():
    result = run(sys.executable, "-m", "snakemake", "--lint")
    assert "Congratulations, your workflow is in a good condition!" in result.stdout + result.stderr


def test_snakefmt_is_clean():
    result = run(sys.executable, "-m", "snakefmt", "--check", "Snakefile", "rules")
    assert result.returncode == 0, result.stderr


def test_cli_help_is_instant():
    """No heavy import (torch, transformers) happens before a command runs."""
    code = "import sys, workflow_scripts.cli as c; c.build_parser(); print('torch' in sys.modules)"
    result = run(sys.executable, "-c", code)
    assert result.stdout.strip() == "False"


CLI_MODULES_LOADED = """
import contextlib, io, sys
from workflow_scripts.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):
    main(sys.argv[1:])
print(sorted(name for name in sys.modules if name.startswith("workflow_scripts.cli.")))
print(all(command in out.getvalue() for command in sys.modules["workflow_scripts.cli.main"].COMMANDS))
"""


def test_cli_help_lists_every_command_without_importing_their_modules():
    """The registry names each command's module and help line: `distillery --help` imports none of them."""
    result = run(sys.executable, "-c", CLI_MODULES_LOADED, "--help")
    assert result.stdout.splitlines() == ["['workflow_scripts.cli.main']", "True"], result.stderr


def test_a_command_loads_only_its_own_module():
    result = run(sys.executable, "-c", CLI_MODULES_LOADED, "kd-status", "--help")
    assert result.stdout.splitlines()[0] == "['workflow_scripts.cli.kd', 'workflow_scripts.cli.main']", result.stderr


# The layers of workflow_scripts/, bottom up (docs/architecture.md, "The layers"): a package or module imports
# only from layers below its own; the basics may use each other. Imports inside functions count too.
LAYERS = (
    (
        "basics",
        {"__init__", "errors", "atomic", "output_guard", "sizes", "choices", "progress", "provenance", "setting"},
    ),
    ("formats", {"formats"}),
    ("model knowledge", {"architectures", "vllm_models"}),
    ("checks and engines", {"verify", "engines"}),
    ("stages", {"convert", "layouts", "plans", "kd", "icm", "report", "serve", "infer", "fetch_wheel"}),
    ("workflow", {"workflow"}),
    ("entry points", {"cli"}),
)
PACKAGE = REPO / "workflow_scripts"


def layer_unit(module: str) -> str:
    """`workflow_scripts.formats.dcp` -> `formats`; a name imported from the package itself -> `__init__`."""
    first = module.split(".")[1] if "." in module else "__init__"
    return first if (PACKAGE / first).is_dir() or (PACKAGE / f"{first}.py").is_file() else "__init__"


def imported_modules(path: Path) -> set[str]:
    """The workflow_scripts modules a file imports, relative imports resolved."""
    import ast

    parts = list(path.relative_to(REPO).with_suffix("").parts)
    package = parts if path.name == "__init__.py" else parts[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = ".".join(package[: len(package) - node.level + 1])
            found |= {f"{base}.{node.module}"} if node.module else {f"{base}.{alias.name}" for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("workflow_scripts"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("workflow_scripts")}
    return found


def test_no_module_imports_from_a_layer_above_it():
    rank = {unit: index for index, (_, units) in enumerate(LAYERS) for unit in units}
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = layer_unit(".".join(path.relative_to(REPO).with_suffix("").parts))
        assert own in rank, f"{own} is in no layer: add it to LAYERS and to docs/architecture.md"
        for module in imported_modules(path):
            other = layer_unit(module)
            upward = rank[other] > rank[own] or (rank[other] == rank[own] > 0 and other != own)
            if upward:
                wrong.append(f"{path.relative_to(REPO)} imports {module} ({LAYERS[rank[other]][0]})")
    assert not wrong, wrong


def test_planning_the_workflow_imports_no_torch():
    """The imports of the Snakefile and rules/*.smk (run at every parse) load no torch or transformers."""
    files = [REPO / "Snakefile", *sorted((REPO / "rules").glob("*.smk"))]
    imports = [
        line for path in files for line in re.findall(r"^from workflow_scripts\S* import .+$", path.read_text(), re.M)
    ]
    code = "\n".join(["import sys", *imports, "print([m for m in ('torch', 'transformers') if m in sys.modules])"])
    result = run(sys.executable, "-c", code)
    assert imports and result.stdout.strip() == "[]", result.stderr


def _long_functions(limit: int) -> list[str]:
    import ast

    found = []
    for path in sorted((REPO / "workflow_scripts").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_in_workflow_scripts_is_over_80_lines():
    assert _long_functions(80) == []


def test_no_module_in_workflow_scripts_is_over_450_lines():
    long_modules = [
        f"{path.relative_to(REPO)} ({length} lines)"
        for path in sorted((REPO / "workflow_scripts").rglob("*.py"))
        if (length := len(path.read_text().splitlines())) > 450
    ]
    assert long_modules == []
