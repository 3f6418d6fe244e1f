from attn_cli.cli import run

run()
