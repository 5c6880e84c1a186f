"""MkDocs hook: the page holding the marker gets the CLI reference generated from the parser."""

from pyro_vae.cli_docs import cli_reference

MARKER = "<!-- cli-reference -->"


def on_page_markdown(markdown, page, config, files):
    return markdown.replace(MARKER, cli_reference()) if MARKER in markdown else markdown
