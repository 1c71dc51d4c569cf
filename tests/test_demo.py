"""`mailtether demo` runs end to end on the embedded server and loses nothing."""

import io

from mailtether.cli._main import main


def test_demo_runs_and_loses_nothing():
    out = io.StringIO()
    assert main(["demo"], out=out) == 0, out.getvalue()
    text = out.getvalue()
    assert "summary: delivered 7, handled 6, duplicates refused 1, handled twice 0, lost 0" in text
    assert "dead connection found after" in text
    assert "is retrying" in text
    assert "is online again after" in text
