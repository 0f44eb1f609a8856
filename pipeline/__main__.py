from pipeline import cli

cli.entry()
