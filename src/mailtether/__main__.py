"""``python -m mailtether``: the command line."""

from mailtether._cli import run

if __name__ == "__main__":
    run()
