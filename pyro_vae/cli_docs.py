"""The command-line reference as Markdown, generated from ``pyro-vae``'s own argparse parser.

The documentation site's CLI page is this text (``docs/hooks/cli_reference.py`` inserts it when the
site is built), so it lists exactly the subcommands and options that ``pyro-vae --help`` shows.
"""

from __future__ import annotations

import argparse

from pyro_vae.cli import build_parser


def cli_reference(parser: argparse.ArgumentParser | None = None) -> str:
    """Markdown for every subcommand of ``parser`` (default: ``pyro-vae``'s): its usage, then a
    table per option group with each option's flags, default and help."""
    parser = parser or build_parser()
    commands = _subcommands(parser)
    summaries = {action.dest: action.help for action in commands._choices_actions}
    sections = []
    for name, subparser in commands.choices.items():
        sections.append(f"## `{subparser.prog}`\n\n{summaries.get(name) or ''}\n\n```\n{subparser.format_usage().strip()}\n```\n")
        for group in subparser._action_groups:
            actions = [action for action in group._group_actions
                       if action.help != argparse.SUPPRESS and not isinstance(action, argparse._HelpAction)]
            if not actions:
                continue
            rows = "\n".join(_row(action) for action in actions)
            description = f"{group.description}\n\n" if group.description else ""
            sections.append(f"### {group.title}\n\n{description}| option | default | meaning |\n| --- | --- | --- |\n"
                            f"{rows}\n")
    return "\n".join(sections)


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction:
    return next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))


def _row(action: argparse.Action) -> str:
    flags = ", ".join(f"`{flag}`" for flag in action.option_strings) or f"`{action.metavar or action.dest}`"
    if action.choices is not None and action.option_strings:
        flags += " " + "\\|".join(f"`{choice}`" for choice in action.choices)
    takes_no_value = action.nargs == 0
    default = "" if takes_no_value or action.default in (None, argparse.SUPPRESS) else f"`{action.default}`"
    return f"| {flags} | {default} | {_escape(action.help or '')} |"


def _escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")
