"""Snapshot tests of the browser's screens (pytest-textual-snapshot): the main screen and the
neuron view at 80 × 24 and 120 × 40. After a deliberate change, look at the new pictures and
accept them with `pytest tests/test_browse_snapshots.py --snapshot-update`."""

from __future__ import annotations

import pytest

from .conftest import REQUIRE_REFERENCE

try:  # test dependencies; CI installs them with [test] and must not skip these tests
    import pytest_textual_snapshot  # noqa: F401
    import textual  # noqa: F401
except ImportError:
    if REQUIRE_REFERENCE:
        raise
    pytest.skip("textual / pytest-textual-snapshot not installed", allow_module_level=True)

from attn_cli.browse.app import BrowseApp  # noqa: E402

from .test_browse import hi_trace, synthetic  # noqa: E402

# Layer 1, head 1; query token 2; key token 0.
TO_NEURON = ["down", "right", "right_square_bracket", "right_square_bracket", "comma", "comma"]


def test_main_screen_80x24(snap_compare):
    assert snap_compare(BrowseApp([synthetic()]), press=TO_NEURON, terminal_size=(80, 24))


def test_neuron_view_80x24(snap_compare):
    assert snap_compare(
        BrowseApp([synthetic()]), press=[*TO_NEURON, "enter"], terminal_size=(80, 24)
    )


def test_main_screen_120x40(snap_compare):
    assert snap_compare(
        BrowseApp([hi_trace()]), press=["right_square_bracket"], terminal_size=(120, 40)
    )


def test_neuron_view_120x40(snap_compare):
    press = ["right_square_bracket", "full_stop", "enter"]
    assert snap_compare(BrowseApp([hi_trace()]), press=press, terminal_size=(120, 40))


def test_masked_map_80x24(snap_compare):
    app = BrowseApp([synthetic(layers=1, heads=1, causal=True)])
    assert snap_compare(app, press=["shift+tab", "right_square_bracket"], terminal_size=(80, 24))
