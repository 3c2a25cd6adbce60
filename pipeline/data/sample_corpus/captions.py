"""Natural-language captions of rendered scenes.

Captions name every visible object by colour and shape ("red circle", always adjacent, so a caption can be checked
against the labels) and vary in wording, object order and spatial relations, so a caption model trained on the
sample corpus has something to learn beyond one template.
"""

from __future__ import annotations

import numpy as np

from pipeline.data.sample_corpus.scenes import Background, RenderedScene, VisibleObject

_COUNT_WORDS = {2: "two", 3: "three", 4: "four"}


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _short(item: VisibleObject) -> str:
    return f"{item.object.color} {item.object.shape}"


def _phrase(item: VisibleObject, with_size: bool) -> str:
    """'a large red circle' or 'an orange star'."""
    words = f"{item.object.size} {_short(item)}" if with_size else _short(item)
    return f"{_article(words)} {words}"


def _background_phrase(background: Background, rng: np.random.Generator) -> str:
    if background.is_plain:
        return f"{_article(background.top)} {background.top} background"
    if rng.random() < 0.5:
        return f"a background fading from {background.top} to {background.bottom}"
    return f"a gradient background from {background.top} to {background.bottom}"


def _boxes_overlap(a: VisibleObject, b: VisibleObject) -> bool:
    return a.box[0] < b.box[2] and b.box[0] < a.box[2] and a.box[1] < b.box[3] and b.box[1] < a.box[3]


def relation(a: VisibleObject, b: VisibleObject) -> str:
    """Where `a` is relative to `b`, as seen in the image (y grows downward)."""
    if _boxes_overlap(a, b) and a.object.depth != b.object.depth:
        return "in front of" if a.object.depth < b.object.depth else "behind"
    dx = b.object.center[0] - a.object.center[0]
    dy = b.object.center[1] - a.object.center[1]
    if abs(dx) >= abs(dy):
        return "to the left of" if dx > 0 else "to the right of"
    return "above" if dy > 0 else "below"


def _listing(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def describe_scene(rendered: RenderedScene, background: Background, rng: np.random.Generator) -> str:
    """One caption for the visible objects; the template and word choices are drawn from `rng`."""
    items = list(rendered.visible)
    order = rng.permutation(len(items))
    items = [items[i] for i in order]
    with_size = rng.random() < 0.75
    phrases = [_phrase(item, with_size) for item in items]
    bg = _background_phrase(background, rng)
    template = int(rng.integers(3))

    if len(items) == 1:
        text = [
            f"{phrases[0]} on {bg}",
            f"{bg} with {phrases[0]} on it",
            f"a picture of {phrases[0]} on {bg}",
        ][template]
    elif len(items) == 2:
        a, b = items
        text = [
            f"{phrases[0]} {relation(a, b)} {phrases[1]} on {bg}",
            f"{phrases[0]} and {phrases[1]} on {bg}; the {_short(a)} is {relation(a, b)} the {_short(b)}",
            f"on {bg}, {phrases[0]} sits {relation(a, b)} {phrases[1]}",
        ][template]
    else:
        count = _COUNT_WORDS[len(items)]
        text = [
            f"{count} shapes on {bg}: {_listing(phrases)}",
            f"{_listing(phrases)} on {bg}",
            f"{_listing(phrases)} on {bg}. The {_short(items[0])} is {relation(items[0], items[1])} "
            f"the {_short(items[1])}",
        ][template]
    return text[0].upper() + text[1:] + "."
