"""``python -m mailtether``: the command line."""

from mailtether.cli._main import run

if __name__ == "__main__":
    run()
