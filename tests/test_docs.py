"""The documentation stays true to the code.

* docs/configuration.md's reference is what docs/gen_config_reference.py generates from the dataclasses;
* every option of every subcommand is documented in docs/cli.md;
* every ``textclf ...``, ``python examples/...`` and ``make ...`` command in README.md and docs/ parses
  (flags exist, values have the right type), every ``textclf.X`` used in Python snippets exists, and the snippets
  compile;
* mkdocs' nav lists every page and ``mkdocs build --strict`` passes.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import textclf
from textclf import cli

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


def load_module(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def code_blocks(page: Path, languages: tuple[str, ...]) -> list[str]:
    text = page.read_text(encoding="utf-8")
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", text, flags=re.S | re.M) if lang in languages]


def shell_commands(page: Path) -> list[str]:
    """Commands in bash/console blocks, continuation lines joined, prompts and trailing comments removed."""
    commands = []
    for block in code_blocks(page, ("bash", "console", "sh")):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.strip()
            if line.startswith("$ "):
                line = line[2:]
            elif block.lstrip().startswith("$") or not line or line.startswith("#"):
                continue  # console output, blank, comment
            line = re.sub(r"\s+#\s.*$", "", line)
            commands.append(line)
    return commands


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices


def test_config_reference_is_up_to_date():
    generator = load_module(DOCS / "gen_config_reference.py", "gen_config_reference")
    page = generator.PAGE.read_text(encoding="utf-8")
    assert generator.render(page) == page, "docs/configuration.md is stale: run python docs/gen_config_reference.py"
    for _, klass in cli.SECTIONS:
        for name in klass.__dataclass_fields__:
            assert f"| `{name}` |" in page


def test_every_cli_option_is_documented():
    page = (DOCS / "cli.md").read_text(encoding="utf-8")
    for name, sub in subparsers().items():
        assert f"## `textclf {name}`" in page, f"docs/cli.md has no section for textclf {name}"
        flags = {flag for action in sub._actions for flag in action.option_strings if flag.startswith("--")}
        for flag in sorted(flags - {"--help"}):
            if flag.startswith("--no-") and "--" + flag[5:] in flags:
                continue  # the negative form of a documented boolean flag
            assert f"`{flag}" in page, f"textclf {name} {flag} is not in docs/cli.md"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_in_the_docs_parse(page):
    parser = cli.build_parser()
    examples = {}
    makefile = (ROOT / "Makefile").read_text()
    for command in shell_commands(page):
        words = shlex.split(command)
        if words[0] in ("textclf", ".venv/bin/textclf") or words[:3] == ["python", "-m", "textclf"]:
            args = words[3:] if words[0] == "python" else words[1:]
            try:
                parser.parse_args(args)
            except SystemExit as exc:
                pytest.fail(f"{page.name}: `{command}` does not parse (exit {exc.code})")
        elif words[0] == "python" and len(words) > 1 and words[1].startswith("examples/"):
            script = ROOT / words[1]
            assert script.is_file(), f"{page.name}: {words[1]} does not exist"
            if script.suffix == ".py":
                module = examples.get(script) or load_module(script, f"docs_example_{script.stem}")
                examples[script] = module
                try:
                    module.parse_args(words[2:])
                except SystemExit as exc:
                    pytest.fail(f"{page.name}: `{command}` does not parse (exit {exc.code})")
        elif words[0] == "make":
            for target in (w for w in words[1:] if "=" not in w):
                assert re.search(rf"^{re.escape(target)}:", makefile, flags=re.M), f"{page.name}: no make {target}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_python_snippets_compile_and_use_real_names(page):
    for block in code_blocks(page, ("python",)):
        tree = ast.parse(block)  # a SyntaxError fails the test
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "textclf":
                assert hasattr(textclf, node.attr), f"{page.name}: textclf.{node.attr} does not exist"


def test_readme_starts_with_the_two_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    first_block = code_blocks(ROOT / "README.md", ("bash",))[0]
    assert [line.split("#")[0].strip() for line in first_block.strip().splitlines()] == ["make demo", "make test"]
    assert readme.index("make demo") < readme.index("## ", readme.index("make demo"))  # before any other section
    assert "examples/data/trec" in readme and "SOURCE.md" in readme


def test_nav_lists_every_page():
    import yaml

    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = {next(iter(item.values())) for item in config["nav"]}
    assert listed == {p.name for p in DOCS.glob("*.md")}


def test_mkdocs_build_strict(tmp_path):
    pytest.importorskip("mkdocs")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


# Pages that report measurements may say where the benchmark data lives; everything a user runs must work on a clone.
MEASUREMENT_PAGES = {"benchmarks.md"}


@pytest.mark.parametrize("page", [p for p in PAGES if p.name not in MEASUREMENT_PAGES], ids=lambda p: p.name)
def test_code_in_the_docs_uses_data_a_clone_has(page):
    """A user's clone has examples/data, not the project's ../shared benchmark folder."""
    blocks = code_blocks(page, ("bash", "console", "sh", "python", "text", ""))
    assert not [line for block in blocks for line in block.splitlines() if "../shared" in line]


def test_example_commands_use_data_a_clone_has():
    for example in sorted((ROOT / "examples").glob("*.py")):
        commands = [line for line in example.read_text(encoding="utf-8").splitlines()
                    if line.strip().startswith(("textclf ", "python ")) and "../shared" in line]
        assert commands == [], f"{example.name}: {commands}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_no_table_is_split_by_a_blank_line(page):
    """A blank line inside a table starts a new paragraph: the rows after it render as text, not as table rows."""
    lines = page.read_text(encoding="utf-8").splitlines()
    split = []
    for i in range(1, len(lines) - 1):
        if lines[i].strip() or not lines[i - 1].startswith("|") or not lines[i + 1].startswith("|"):
            continue
        following = lines[i + 2] if i + 2 < len(lines) else ""
        if not re.match(r"^\|[\s:|-]+\|$", following.strip()):  # not the separator line of a new table
            split.append(i + 1)
    assert split == [], f"blank lines inside a table at lines {split}"
