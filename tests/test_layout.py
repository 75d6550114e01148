"""The README's layout table as a check: which folder may import what, imports inside functions included.

`make lint` runs this file on its own (`pytest --noconftest`: no services); `make test` runs it too. A
failure names the module, the line, the import and the rule it breaks. Plain `ast`, not import-linter:
import-linter does not see the imports written inside functions, where Prefect used to hide.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("campaigns", "flows", "tasks", "blocks", "deployments", "sandbox")

DOMAIN = tuple(f"campaigns.{folder}" for folder in ("control", "audience", "sending", "webhooks", "reporting", "store"))
FACES = (
    "campaigns.api",
    "campaigns.webhook_app",
    "campaigns.cli",
    "campaigns.demo",
    "campaigns.api_tokens",
    "campaigns.json_input",
)
SHARED = ("campaigns.settings", "campaigns.errors")  # every folder may import these two leaves


@dataclass(frozen=True)
class Rule:
    """Modules under any of `modules` may not import anything under `forbidden`, unless it is under `allowed`."""

    name: str
    modules: tuple[str, ...]
    forbidden: tuple[str, ...]
    allowed: tuple[str, ...] = ()


def _only(folder: str, *may_import: str) -> Rule:
    """A domain folder's row of the README's table: the other folders of `campaigns` it may import."""
    return Rule(
        f"{folder} imports only {', '.join(may_import) or 'nothing else of campaigns'}",
        (folder,),
        ("campaigns",),
        (folder, *SHARED, *may_import),
    )


RULES = (
    Rule(
        "the domain runs without Prefect, an HTTP framework or a face",
        DOMAIN,
        ("prefect", "starlette", "uvicorn", "fastapi", "flows", "tasks", "blocks", "deployments", "sandbox", *FACES),
    ),
    Rule("providers never touch SQL", ("campaigns.sending.providers",), ("sqlalchemy", "psycopg", "campaigns.store")),
    Rule("the sandbox is not the product", ("sandbox",), ("campaigns",)),
    Rule("only the faces import a face", ("flows", "tasks", "blocks", "deployments", "campaigns.infra"), FACES),
    _only("campaigns.store"),
    _only("campaigns.infra"),
    _only("campaigns.audience", "campaigns.store"),
    _only("campaigns.sending", "campaigns.store", "campaigns.infra.faultpoints"),
    _only("campaigns.sending.providers", "campaigns.sending.error_codes"),
    _only("campaigns.webhooks", "campaigns.store", "campaigns.sending"),
    _only("campaigns.reporting", "campaigns.store", "campaigns.sending"),
    _only(
        "campaigns.control",
        "campaigns.store",
        "campaigns.audience",
        "campaigns.sending",
        "campaigns.webhooks",
        "campaigns.reporting",
    ),
    Rule("blocks import only campaigns", ("blocks",), ("flows", "tasks", "deployments")),
    Rule("tasks import no flow and no deployment", ("tasks",), ("flows", "deployments")),
)

# Imports the table refuses that the code still makes, each with the reason it stands; a new one fails.
# (importing module, imported module or package): why
KNOWN = {
    (
        "campaigns.sending.runner",
        "campaigns.control",
    ): "the runner is the control of one run (the checklist at a scheduled start, the campaign's state)",
    ("campaigns.sending.runner", "campaigns.audience"): "the runner builds the audience when a run starts",
    ("campaigns.sending.runner", "campaigns.reporting"): "the runner sizes its waves by the rate stats reports",
    ("campaigns.sending.record", "campaigns.control.lifecycle"): "a batch pauses its campaign on a blocking error",
    ("campaigns.sending.reconcile", "campaigns.webhooks.ingest"): "reconciliation applies an answer as a webhook",
    ("campaigns.webhooks.ingest", "campaigns.control.lifecycle"): "a failed status with a campaign-level code "
    "pauses its campaign",
    ("campaigns.reporting.run_report", "campaigns.control.lifecycle"): "the run's report reads its campaign",
}


@dataclass(frozen=True)
class Import:
    module: str  # the importing module
    path: Path
    line: int
    name: str  # what it imports: a module (`from a import b` is `a.b` when b is a module) or a package


def _under(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(name: str, root: Path) -> bool:
    base = root.joinpath(*name.split("."))
    return base.with_suffix(".py").is_file() or (base / "__init__.py").is_file()


def imports(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> Iterator[Import]:
    """Every import statement of the packages' modules, at any depth (functions, methods, `if` blocks)."""
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            module = _module_name(path, root)
            is_package = path.name == "__init__.py"
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        yield Import(module, path, node.lineno, alias.name)
                elif isinstance(node, ast.ImportFrom):
                    base = node.module or ""
                    if node.level:  # relative: from the importing module's package
                        anchor = module.split(".")[: len(module.split(".")) - node.level + is_package]
                        base = ".".join([*anchor, base] if base else anchor)
                    for alias in node.names:
                        full = f"{base}.{alias.name}"
                        yield Import(module, path, node.lineno, full if _is_module(full, root) else base)


def violations(root: Path = ROOT, packages: tuple[str, ...] = PACKAGES) -> list[str]:
    found: dict[str, None] = {}  # in order, once: `from a import b, c` is one line
    for imp in imports(root, packages):
        for rule in RULES:
            if not _under(imp.module, rule.modules) or not _under(imp.name, rule.forbidden):
                continue
            if _under(imp.name, rule.allowed) or any(imp.module == m and _under(imp.name, (n,)) for m, n in KNOWN):
                continue
            found[f"{imp.path.relative_to(root)}:{imp.line}: {imp.module} imports {imp.name}: {rule.name}"] = None
    return list(found)


def test_every_module_keeps_to_the_layout_table():
    if found := violations():
        pytest.fail("imports against the README's layout table:\n" + "\n".join(found), pytrace=False)


def test_each_known_exception_is_still_made():
    """An exception nobody needs any more is removed, so it cannot hide a new import of the same kind."""
    made = {
        (imp.module, name)
        for imp in imports()
        for (module, name) in KNOWN
        if imp.module == module and _under(imp.name, (name,))
    }
    assert set(KNOWN) - made == set()


def test_an_import_hidden_in_a_function_is_found_and_named(tmp_path):
    package = tmp_path / "campaigns" / "sending"
    package.mkdir(parents=True)
    (tmp_path / "campaigns" / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "pacing.py").write_text("import math\n\n\ndef later():\n    from prefect import flow\n    return flow\n")

    assert violations(tmp_path, ("campaigns",)) == [
        "campaigns/sending/pacing.py:5: campaigns.sending.pacing imports prefect: the domain runs without Prefect, "
        "an HTTP framework or a face"
    ]
