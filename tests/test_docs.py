"""The documentation: the generated CLI page covers the real CLI, the API page every exported name."""

import re
import subprocess
import sys
from pathlib import Path

import pyro_vae
from pyro_vae.cli import build_parser
from pyro_vae.cli_docs import cli_reference

DOCS = Path(__file__).resolve().parents[1] / "docs"


def help_text(*command):
    result = subprocess.run([sys.executable, "-m", "pyro_vae.cli", *command, "--help"], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_the_cli_page_lists_every_subcommand_and_option_the_help_shows():
    reference = cli_reference()
    subcommands = re.search(r"\{([a-z,]+)\}", help_text()).group(1).split(",")
    assert len(subcommands) >= 6
    for subcommand in subcommands:
        assert f"## `pyro-vae {subcommand}`" in reference
        options = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", help_text(subcommand))) - {"--help"}
        assert options, subcommand
        section = reference.split(f"## `pyro-vae {subcommand}`")[1].split("\n## `")[0]
        missing = sorted(option for option in options if f"`{option}`" not in section)
        assert not missing, f"pyro-vae {subcommand}: {missing}"


def test_the_cli_page_gives_each_option_its_default_and_help():
    reference = cli_reference(build_parser())
    row = next(line for line in reference.splitlines() if line.startswith("| `--batch-size`"))
    assert "`128`" in row
    row = next(line for line in reference.splitlines() if line.startswith("| `--no-capture`"))
    assert "recorded as a graph" in row


def test_every_exported_name_is_documented_and_in_the_api_reference():
    api_page = (DOCS / "api.md").read_text()
    referenced = set(re.findall(r"^::: pyro_vae\.(\w+)$", api_page, flags=re.MULTILINE))
    assert referenced == set(pyro_vae.__all__)
    undocumented = [name for name in pyro_vae.__all__
                    if not isinstance(getattr(pyro_vae, name), dict) and not (getattr(pyro_vae, name).__doc__ or "").strip()]
    assert not undocumented


def test_every_option_the_cli_guide_explains_exists():
    """The hand-written guide may lag behind the parser, but never names an option that is gone."""
    guide = (DOCS / "cli-guide.md").read_text()
    explained = set(re.findall(r"^\| `(--[a-z][a-z0-9-]*)`", guide, flags=re.MULTILINE))
    assert len(explained) > 40
    reference = cli_reference()
    assert sorted(option for option in explained if f"`{option}`" not in reference) == []
