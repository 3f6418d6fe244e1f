"""The browser on an image trace: the picture beside the map, the selected token's row laid
over its patches (as --view overlay draws it), and a click on a patch selects that patch."""

from __future__ import annotations

import base64

import pytest

pytest.importorskip("PIL")
pytest.importorskip("textual")

from attn_cli.browse.app import BrowseApp  # noqa: E402
from attn_cli.browse.widgets import GeometryView, PictureView  # noqa: E402
from tests.test_browse import hi_trace, main_screen, run  # noqa: E402
from tests.test_vision_fixtures import FIXTURES, PICTURE  # noqa: E402

GRAY = 100  # a uniform picture, so each cell's colour is the overlay's by hand
LIT = "#b29432"  # a patch with all the row's weight: 0.5·100 + 0.5·(255, 196, 0), rounded
DARK = "#1e1e1e"  # a patch with none: 0.3·100


@pytest.fixture(scope="module")
def picture_trace():
    import attn_cli

    m = attn_cli.load_model(FIXTURES / "dinov2_registers")
    return m.trace(str(PICTURE), layers=0, heads=0)


def gray_and_one_hot(trace, query: int, target: int):
    """The trace with a uniform gray thumbnail and W's row `query` all on token `target`."""
    info = trace.config["image"]
    h, w = info["thumbnail"]["height"], info["thumbnail"]["width"]
    rgb = base64.b64encode(bytes([GRAY]) * (h * w * 3)).decode()
    info["thumbnail"] = {**info["thumbnail"], "rgb": rgb}
    info["outliers"] = []
    step = trace.steps_named("W")[0]
    step.data = step.data.copy()
    step.data[query] = 0.0
    step.data[query, target] = 1.0
    return trace


def test_the_picture_replaces_the_geometry_and_lights_exactly_the_attended_patch(picture_trace):
    info = picture_trace.config["image"]
    rows, cols = info["grid"]
    first = len(info["prefix"])  # [CLS] and the registers come before the patches
    r, c = 1, rows - 1 if cols == rows else 1
    target = first + r * cols + c
    trace = gray_and_one_hot(picture_trace, 0, target)
    seen = {}

    async def script(pilot):
        screen = main_screen(pilot.app)
        picture = screen.query_one(PictureView)
        seen["displays"] = (picture.display, screen.query_one(GeometryView).display)
        seen["px"] = picture.px
        seen["lines"] = picture.render().split("\n")

    run(BrowseApp([trace]), script, size=(120, 40))
    assert seen["displays"] == (True, False)
    px = seen["px"]
    assert px >= 1
    title, *lines, under = seen["lines"]
    assert title.plain.startswith("[CLS] attends to")
    # the row's share on the tokens that are not patches: none, all of it went to one patch
    assert under.plain == "not on the picture: [CLS] 0.000 · reg0 0.000 · reg1 0.000"
    assert len(lines) == (rows * px + 1) // 2
    lit, dark = set(), set()
    for y, line in enumerate(lines):
        x = 0
        for span in line.spans:
            for k in range(span.start, span.end):
                colour = span.style.color.triplet.hex  # the upper pixel of the cell
                (lit if colour == LIT else dark if colour == DARK else set()).add((2 * y, k))
            x = span.end
        assert x == cols * px
    # the cells whose upper pixel (pixel row 2·line) falls in the patch's px × px block
    expected = {
        (y, x)
        for y in range(0, rows * px, 2)
        if r * px <= y < (r + 1) * px
        for x in range(c * px, (c + 1) * px)
    }
    assert expected
    assert lit == expected
    assert len(dark) == len(lines) * cols * px - len(expected)


def test_clicking_a_patch_selects_its_token(picture_trace):
    info = picture_trace.config["image"]
    cols = info["grid"][1]
    first = len(info["prefix"])
    seen = {}

    async def script(pilot):
        screen = main_screen(pilot.app)
        picture = screen.query_one(PictureView)
        px = picture.px
        # the cell in the middle of patch (2, 1): one column of padding on the left, one title
        # line above the picture
        await pilot.click(PictureView, offset=(1 + px + px // 2, 1 + (2 * px + px // 2) // 2))
        await pilot.pause()
        seen["qtok"] = screen.qtok
        seen["title"] = picture.render().split("\n")[0].plain
        await pilot.click(PictureView, offset=(0, 0))  # the title: no patch there
        await pilot.pause()
        seen["after_title"] = screen.qtok

    run(BrowseApp([picture_trace]), script, size=(120, 40))
    assert seen["qtok"] == first + 2 * cols + 1
    assert seen["title"].startswith("patch 2,1 attends to")
    assert seen["after_title"] == seen["qtok"]


def test_a_text_trace_keeps_the_geometry():
    seen = {}

    async def script(pilot):
        screen = main_screen(pilot.app)
        seen["displays"] = (
            screen.query_one(PictureView).display,
            screen.query_one(GeometryView).display,
        )

    run(BrowseApp([hi_trace()]), script)
    assert seen["displays"] == (False, True)
