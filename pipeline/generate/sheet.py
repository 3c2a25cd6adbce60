"""The contact sheet: one row per sample, its inputs beside each generated output, labelled; one PNG to look at.

Drawn with PIL on a fixed grid, so its size is known in advance: `sheet_size(rows, columns)`. The row labels and
column titles are also kept whole in the PNG's text metadata (key `contact_sheet`, JSON): a label cut to fit its
cell, a prompt say, can still be read from the file itself.
"""

from __future__ import annotations

import io
import json
import textwrap
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from pipeline.generate.render import Rendered

CELL = 128  # pixels per cell side
HEADER = 20  # column titles
LABEL = 96  # sample labels (keys or prompts), left of each row
METADATA_KEY = "contact_sheet"  # PNG text chunk: {"columns": titles, "rows": labels}
_BACKGROUND, _INK, _GENERATED = (255, 255, 255), (20, 20, 20), (150, 30, 30)


def sheet_size(rows: int, columns: int) -> tuple[int, int]:
    """(width, height) in pixels of a sheet of `rows` samples and `columns` modalities."""
    return LABEL + columns * CELL, HEADER + rows * CELL


def _fit(picture: np.ndarray, side: int) -> Image.Image:
    """Scaled to fit a side x side square, nearest neighbour (tokens are coarse; keep their edges visible)."""
    image = Image.fromarray(np.asarray(picture, np.uint8))
    scale = side / max(image.size)
    size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(size, Image.NEAREST)


def _text(draw: ImageDraw.ImageDraw, origin: tuple[int, int], text: str, width_chars: int, lines: int,
          font: ImageFont.ImageFont) -> None:
    wrapped = textwrap.wrap(text, width_chars)[:lines] or ["(empty)"]
    draw.multiline_text(origin, "\n".join(wrapped), fill=_INK, font=font, spacing=2)


def contact_sheet(labels: Sequence[str], titles: Sequence[str], cells: Sequence[Sequence[Rendered]],
                  generated: Sequence[bool]) -> bytes:
    """PNG bytes: row i shows cells[i] (one per title) beside labels[i] (the sample's key or prompt); generated
    columns' titles are marked and drawn in another colour."""
    width, height = sheet_size(len(labels), len(titles))
    sheet = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default()
    for col, (title, made) in enumerate(zip(titles, generated, strict=True)):
        label = f"{title} (generated)" if made else f"{title} (input)"
        draw.text((LABEL + col * CELL + 4, 4), label, fill=_GENERATED if made else _INK, font=font)
    for row, (label, rendered) in enumerate(zip(labels, cells, strict=True)):
        top = HEADER + row * CELL
        _text(draw, (4, top + 4), label, 14, 8, font)
        for col, cell in enumerate(rendered):
            left = LABEL + col * CELL
            if cell.picture is not None:
                picture = _fit(cell.picture, CELL - 8)
                sheet.paste(picture, (left + (CELL - picture.width) // 2, top + (CELL - picture.height) // 2))
            else:
                _text(draw, (left + 4, top + 4), cell.text or "", 20, 10, font)
        draw.line([(0, top), (width, top)], fill=(210, 210, 210))
    info = PngInfo()
    info.add_text(METADATA_KEY, json.dumps({"columns": list(titles), "rows": list(labels)}))
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()
