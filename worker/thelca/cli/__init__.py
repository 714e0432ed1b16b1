"""The `thelca` command line: `main` builds the parser; each subcommand has its module.

Subcommand modules share thelca.cli.common and never import thelca.cli.main.
"""
