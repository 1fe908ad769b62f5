"""Fields drawn with their boxes, coloured by class and labelled."""

from __future__ import annotations

from collections.abc import Mapping

from .boxes import DetectedBox

CLASS_COLOURS = {"WBC": (37, 99, 235), "RBC": (220, 38, 38), "PLT": (22, 163, 74)}
OTHER_COLOUR = (234, 179, 8)


def annotate(image, boxes: list[DetectedBox], classes: list[str] | None = None,
             reviewed: Mapping[str, str] | None = None):
    """A copy of ``image`` with each box drawn in its class colour and labelled (class or cell type).
    ``reviewed`` (``reviewed_white_cells`` of the stored analysis) gives a white cell a reviewer typed that
    type, said as reviewed: the field went on showing the model's type beside a corrected differential."""
    from PIL import ImageDraw, ImageFont

    canvas = image.convert("RGB").copy()
    draw = ImageDraw.Draw(canvas)
    scale = max(canvas.size) / 640
    width = max(1, round(2 * scale))
    font = ImageFont.load_default(size=max(10, round(12 * scale)))
    for box in boxes:
        if classes is not None and box.class_code not in classes:
            continue
        colour = CLASS_COLOURS.get(box.class_code, OTHER_COLOUR)
        draw.rectangle(box.xyxy, outline=colour, width=width)
        reviewed_code = (reviewed or {}).get(box.cell_name) if box.code is not None else None
        if reviewed_code:
            text = f"{reviewed_code} reviewed"
        else:  # the tree's confidence for a typed cell; a type given without one (set by hand) shows the box's
            typed = box.code is not None and box.sub_confidence is not None
            text = f"{box.code or box.class_code} {box.sub_confidence if typed else box.confidence:.2f}"
        left, top, right, bottom = draw.textbbox((box.x1, box.y1), text, font=font)
        offset = bottom - top + 2
        y = box.y1 - offset if box.y1 >= offset else box.y1
        draw.rectangle((left, y, right + 2, y + offset), fill=colour)
        draw.text((box.x1 + 1, y), text, fill=(255, 255, 255), font=font)
    return canvas
