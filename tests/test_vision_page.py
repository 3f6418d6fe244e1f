"""The interactive page of a vision trace, in headless Chromium (as tests/test_interactive.py):
the picture from an inline data: URL, and hovering a patch tints every patch cell by that
patch's row of the current map."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_interactive import Opened, browser, hand_trace  # noqa: F401  (browser: a fixture)

pytest.importorskip("PIL")

from tests.test_vision_fixtures import FIXTURES, PICTURE  # noqa: E402

ALPHA = 0.75  # the page's tint: opacity 0.75 × weight / the row's largest patch weight


@pytest.fixture(scope="module")
def dino_trace():
    import attn_cli

    m = attn_cli.load_model(FIXTURES / "dinov2_registers")
    return m.trace(str(PICTURE), layers=1, heads="all")


def test_the_page_of_a_picture_allows_only_data_images():
    import attn_cli
    from attn_cli.render.interactive import interactive_html

    t = attn_cli.load_model(FIXTURES / "dinov2_registers").trace(str(PICTURE), layers=0)
    page = interactive_html([t])
    assert "default-src 'none'" in page
    assert 'img-src data:">' in page  # the one source allowed beside the inline script
    assert 'id="pic-img"' in page
    text_page = interactive_html([hand_trace(["a", "b"], layers=1, heads=1)])
    csp = text_page[text_page.index('content="default-src') :].split(">", 1)[0]
    assert "img-src" not in csp and 'id="pic-img"' not in text_page


def cells(o: Opened) -> list[dict]:
    return o.page.eval_on_selector_all(
        "#pic-grid .patch",
        """cs => cs.map(c => ({r: +c.dataset.r, c: +c.dataset.c, value: c.dataset.value ?? null,
            alpha: c.dataset.alpha ?? null, bg: getComputedStyle(c).backgroundColor,
            query: c.classList.contains('query')}))""",
    )


def rgba_alpha(css: str) -> float:
    parts = css[css.index("(") + 1 : -1].split(",")
    return float(parts[3]) if len(parts) == 4 else 1.0


def test_hovering_a_patch_tints_the_picture_by_its_row(browser, dino_trace, tmp_path):  # noqa: F811
    from attn_cli.render.interactive import interactive_html

    t = dino_trace
    image = t.config["image"]
    rows, cols = image["grid"]
    first = len(image["prefix"])
    assert (rows, cols, image["prefix"]) == (4, 4, ["[CLS]", "reg0", "reg1"])
    o = Opened(browser, interactive_html([t]), tmp_path)
    src = o.page.get_attribute("#pic-img", "src")
    assert src is not None and src.startswith("data:image/png;base64,")
    size = o.page.eval_on_selector("#pic-img", "i => [i.naturalWidth, i.naturalHeight]")
    assert size == [image["thumbnail"]["width"], image["thumbnail"]["height"]]
    assert len(cells(o)) == rows * cols
    assert all(c["value"] is None for c in cells(o))  # nothing focused, nothing tinted

    # layer 1, head 0 (the page's first selection); patch (2, 1) is token first + 2·4 + 1
    w = t.find("W", layer=1, head=0).data
    r, c = 2, 1
    q = first + r * cols + c
    o.page.hover(f"#pic-grid .patch[data-r='{r}'][data-c='{c}']")
    shown = cells(o)
    row = w[q, first:]
    top = np.abs(row).max()
    for cell in shown:
        want = row[cell["r"] * cols + cell["c"]]
        assert abs(float(cell["value"]) - want) <= 5e-4 * abs(want)  # 4 significant digits
        assert abs(float(cell["alpha"]) - ALPHA * want / top) <= 1e-3
        assert abs(rgba_alpha(cell["bg"]) - ALPHA * want / top) <= 1e-3 + 1 / 255
        assert cell["query"] == ((cell["r"], cell["c"]) == (r, c))  # the query patch outlined
    # the head view focuses the same token
    assert o.page.get_attribute("#hv-info", "data-i") == str(q)

    # "from [CLS]": the class token's row
    o.page.hover("#pic-prefix .pic-token[data-i='0']")
    row = w[0, first:]
    top = np.abs(row).max()
    shown = cells(o)
    for cell in shown:
        want = row[cell["r"] * cols + cell["c"]]
        assert abs(float(cell["alpha"]) - ALPHA * want / top) <= 1e-3
    assert not any(c["query"] for c in shown)
    o.check_clean()
