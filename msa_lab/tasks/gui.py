"""GUI screens drawn with Pillow, with an instruction that maps to one click, type or scroll action.

A screen is a main window (title bar with a close button, menu bar, toolbar icons, a form of text
fields and checkboxes, a scrollable list, a row of buttons), sometimes with a dialog on top that
hides what it covers. Themes, sizes and labels vary; labels repeat across the main window and the
dialog ("OK", "Cancel", "Name"), and then the instruction says which window it means.

answer: JSON {"kind": "click"|"type"|"scroll", "x": int, "y": int, "text": str|None,
"direction": "up"|"down"|None}; (x, y) is the centre of the target box.
meta: "size" [W, H], "box" (the target box [x0, y0, x1, y1], x1/y1 exclusive), "instruction",
"elements" (every element drawn, with box, window and "occluded"; a field also has "label_box", its
"Label:" text left of the box: the ink's width, the field's height), "target_index" into elements.
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from typing import Iterator, Sequence

from PIL import Image, ImageDraw

from . import vocab
from .draw import centre, draw_text, overlaps, text_size
from .schema import IMAGE_TOKEN, build_dataset, check_choices, check_n_seed, check_size_range, example, example_rng

TASK = "gui"
# msa_lab.tasks.schema: 2 = fields carry "label_box" in meta (the screens and instructions are unchanged)
REVISION = 2
ACTIONS = ("click", "type", "scroll")
CLICK_KINDS = ("button", "menu", "icon", "checkbox", "close")
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class Theme:
    name: str
    desktop: RGB
    window: RGB
    title_bg: RGB
    title_fg: RGB
    text: RGB
    button: RGB
    button_text: RGB
    border: RGB
    field: RGB
    accent: RGB
    menu_bg: RGB


THEMES = {
    t.name: t
    for t in (
        Theme("light", (58, 110, 165), (240, 240, 240), (255, 255, 255), (20, 20, 20), (20, 20, 20), (225, 225, 225),
              (20, 20, 20), (150, 150, 150), (255, 255, 255), (0, 120, 215), (250, 250, 250)),
        Theme("dark", (20, 24, 30), (43, 43, 48), (30, 30, 34), (230, 230, 230), (225, 225, 225), (70, 70, 78),
              (240, 240, 240), (95, 95, 105), (28, 28, 32), (80, 160, 255), (36, 36, 40)),
        Theme("blue", (200, 215, 235), (225, 235, 248), (40, 90, 170), (255, 255, 255), (15, 30, 60), (190, 210, 240),
              (15, 30, 60), (110, 140, 190), (255, 255, 255), (40, 90, 170), (210, 225, 245)),
        Theme("green", (70, 90, 70), (236, 244, 232), (56, 130, 80), (255, 255, 255), (25, 45, 30), (200, 228, 200),
              (25, 45, 30), (120, 160, 120), (252, 255, 250), (56, 130, 80), (220, 236, 216)),
        Theme("rose", (90, 60, 80), (250, 238, 242), (180, 60, 100), (255, 255, 255), (60, 20, 40), (240, 200, 215),
              (60, 20, 40), (190, 130, 150), (255, 255, 255), (180, 60, 100), (245, 225, 232)),
    )
}


def iter_gui(
    n: int,
    seed: int,
    *,
    actions: Sequence[str] = ACTIONS,
    themes: Sequence[str] = tuple(THEMES),
    min_width: int = 400,
    max_width: int = 800,
    min_height: int = 300,
    max_height: int = 600,
    dialog_prob: float = 0.4,
) -> Iterator[dict]:
    """Yield n GUI-grounding examples (common schema; one screenshot each).

    actions: which actions instructions may ask for (subset of ACTIONS). themes: subset of THEMES.
    Width and height are drawn from the given pixel ranges. dialog_prob: chance of a dialog on top.
    """
    check_n_seed(n, seed)
    actions = check_choices("actions", actions, ACTIONS)
    themes = check_choices("themes", themes, tuple(THEMES))
    check_size_range("min_width", min_width, "max_width", max_width, 320)
    check_size_range("min_height", min_height, "max_height", max_height, 240)
    if isinstance(dialog_prob, bool) or not isinstance(dialog_prob, (int, float)) or not 0 <= dialog_prob <= 1:
        raise ValueError(f"dialog_prob must be a probability in [0, 1], got {dialog_prob!r}")
    return _generate(n, seed, actions, themes, (min_width, max_width), (min_height, max_height), float(dialog_prob))


def make_gui(n: int, seed: int, cache_dir: str | None = None, **opts):
    """`datasets.Dataset` of iter_gui(n, seed, **opts)."""
    return build_dataset("msa_lab.tasks.gui:iter_gui", TASK, n, seed, opts, cache_dir)


def _generate(n, seed, actions, themes, widths, heights, dialog_prob) -> Iterator[dict]:
    for i in range(n):
        rng = example_rng(TASK, seed, i)
        for _ in range(50):  # a screen may offer none of the requested actions (e.g. the list is hidden)
            screen = _Screen(rng, THEMES[rng.choice(themes)], rng.randint(*widths), rng.randint(*heights))
            screen.main_window()
            if rng.random() < dialog_prob:
                screen.dialog()
            picked = _pick_target(rng, screen.elements, actions)
            if picked is not None:
                break
        else:
            raise RuntimeError(f"gui: no screen offered any of the actions {actions} in 50 tries (seed {seed}, example {i})")
        index, action = picked
        target = screen.elements[index]
        x, y = centre(target["box"])
        answer = {"kind": action["kind"], "x": x, "y": y, "text": action.get("text"), "direction": action.get("direction")}
        instruction = _instruction(target, screen.elements, action)
        meta = {"size": [screen.w, screen.h], "box": target["box"], "box_convention": "x0,y0 inclusive; x1,y1 exclusive",
                "instruction": instruction, "theme": asdict(screen.theme), "font_size": screen.fs,
                "target_index": index, "elements": screen.elements, "dialog": screen.dialog_box}
        yield example(TASK, seed, i, f"{IMAGE_TOKEN}\n{instruction}", [screen.img], json.dumps(answer), meta)


# ---------------------------------------------------------------------------- drawing
def _rect(draw: ImageDraw.ImageDraw, box, fill=None, outline=None) -> None:
    draw.rectangle((box[0], box[1], box[2] - 1, box[3] - 1), fill=fill, outline=outline)  # PIL is inclusive


class _Screen:
    def __init__(self, rng: random.Random, theme: Theme, w: int, h: int):
        self.rng, self.theme, self.w, self.h = rng, theme, w, h
        self.img = Image.new("RGB", (w, h), theme.desktop)
        self.draw = ImageDraw.Draw(self.img)
        self.fs = max(10, min(16, round(min(w, h) / 32) + rng.randint(-1, 1)))
        self.elements: list[dict] = []
        self.dialog_box = None

    def add(self, kind: str, label: str, window: str, box, **extra) -> None:
        box = [int(v) for v in box]
        if not (0 <= box[0] < box[2] <= self.w and 0 <= box[1] < box[3] <= self.h):  # a layout bug, not user input
            raise AssertionError(f"gui: {kind} {label!r} box {box} outside the {self.w}x{self.h} image")
        self.elements.append({"kind": kind, "label": label, "window": window, "box": box, "occluded": False, **extra})

    def text(self, x, y, s, fill, size=None):
        return draw_text(self.draw, (x, y), s, size or self.fs, fill)

    def frame(self, box, title: str, window: str) -> int:
        """Window frame with title bar and close button; returns the y below the title bar."""
        t, (x0, y0, x1, _) = self.theme, box
        _rect(self.draw, box, t.window, t.border)
        th = self.fs + 12
        _rect(self.draw, (x0 + 1, y0 + 1, x1 - 1, y0 + th), t.title_bg)
        self.text(x0 + 8, y0 + (th - text_size(title, self.fs)[1]) // 2, title, t.title_fg)
        cs = th - 8
        close = (x1 - cs - 5, y0 + 4, x1 - 5, y0 + 4 + cs)
        self.draw.line((close[0] + 3, close[1] + 3, close[2] - 4, close[3] - 4), fill=t.title_fg, width=2)
        self.draw.line((close[0] + 3, close[3] - 4, close[2] - 4, close[1] + 3), fill=t.title_fg, width=2)
        self.add("close", title, window, close)
        return y0 + th + 1

    def button(self, x1, y, label, window) -> int:
        """Button right-aligned at x1; returns its left edge."""
        t, bh = self.theme, self.fs + 14
        tw, tht = text_size(label, self.fs)
        box = (x1 - tw - 24, y, x1, y + bh)
        _rect(self.draw, box, t.button, t.border)
        self.text(box[0] + 12, y + (bh - tht) // 2, label, t.button_text)
        self.add("button", label, window, box)
        return box[0]

    def field(self, x0, x1, y, label, label_w, window) -> None:
        t, fh = self.theme, self.fs + 12
        label_box = self.text(x0, y + (fh - text_size(label, self.fs)[1]) // 2, label + ":", t.text)
        box = (x0 + label_w, y, x1, y + fh)
        _rect(self.draw, box, t.field, t.border)
        value = None
        if self.rng.random() < 0.3:
            cand = self.rng.choice(vocab.TYPED_TEXT)
            if text_size(cand, self.fs)[0] < box[2] - box[0] - 10:  # prefill only what fits
                value = cand
                self.text(box[0] + 5, y + (fh - text_size(cand, self.fs)[1]) // 2, cand, t.text)
        label_box = [label_box[0], y, label_box[2], y + fh]  # the ink's width, the field's row
        self.add("field", label, window, box, value=value, label_box=[int(v) for v in label_box])

    def main_window(self) -> None:
        rng, t, fs = self.rng, self.theme, self.fs
        m = rng.randint(0, 12)
        x0, y0, x1, y1 = m, m, self.w - m, self.h - m
        y = self.frame((x0, y0, x1, y1), rng.choice(vocab.WINDOW_TITLES), "main")

        # menu bar: menus keep their usual order
        mh = fs + 10
        _rect(self.draw, (x0 + 1, y, x1 - 1, y + mh), t.menu_bg)
        menus = sorted(rng.sample(vocab.MENUS, rng.randint(3, len(vocab.MENUS))), key=vocab.MENUS.index)
        x = x0 + 4
        for label in menus:
            box = (x, y, x + text_size(label, fs)[0] + 16, y + mh)
            if box[2] > x1 - 4:
                break
            self.text(x + 8, y + (mh - text_size(label, fs)[1]) // 2, label, t.text)
            self.add("menu", label, "main", box)
            x = box[2]
        y += mh + 4

        # toolbar: icon tile with a glyph, caption below
        isz, cfs = 2 * fs, max(9, fs - 3)
        x = x0 + 6
        for label in rng.sample(vocab.TOOLBAR_ICONS, rng.randint(3, 6)):
            cw = max(isz, text_size(label, cfs)[0]) + 10
            box = (x, y, x + cw, y + isz + cfs + 8)
            if box[2] > x1 - 6:
                break
            ix = x + (cw - isz) // 2
            _rect(self.draw, (ix, y + 2, ix + isz, y + 2 + isz), t.accent)
            _rect(self.draw, (ix + isz // 4, y + 2 + isz // 4, ix + 3 * isz // 4, y + 2 + 3 * isz // 4), t.window)
            self.text(x + (cw - text_size(label, cfs)[0]) // 2, y + isz + 4, label, t.text, cfs)
            self.add("icon", label, "main", box)
            x = box[2] + 4
        y += isz + cfs + 16

        # bottom button row, right-aligned
        bh = fs + 14
        by = y1 - 10 - bh
        x = x1 - 10
        for label in rng.sample(vocab.BUTTONS, rng.randint(2, 4)):
            if x - text_size(label, fs)[0] - 24 < x0 + 10:
                break
            x = self.button(x, by, label, "main") - 8
        bottom = by - 10

        # scrollable list on the right
        lw = max(120, min(260, int(0.38 * (x1 - x0))))
        lx0, lx1 = x1 - 10 - lw, x1 - 10
        form_x1 = x1 - 10
        row = fs + 8
        if bottom - (y + fs + 6) >= 3 * row + 4:
            form_x1 = lx0 - 14
            name = rng.choice(list(vocab.LISTS))
            self.text(lx0, y, name.capitalize() + ":", t.text)
            self.scroll_list((lx0, y + fs + 6, lx1, bottom), name, row)

        # form: text fields, then checkboxes, while they fit
        fields = rng.sample(vocab.FIELDS, rng.randint(1, 4))
        label_w = max(text_size(f + ":", fs)[0] for f in fields) + 10
        fh = fs + 12
        for label in fields:
            if y + fh > bottom or form_x1 - (x0 + 10 + label_w) < 60:
                break
            self.field(x0 + 10, form_x1, y, label, label_w, "main")
            y += fh + 8
        for label in rng.sample(vocab.CHECKBOXES, rng.randint(0, 3)):
            cb = fs + 2
            width = cb + 6 + text_size(label, fs)[0]
            if y + cb > bottom or x0 + 10 + width > form_x1:
                break
            checked = rng.random() < 0.5
            sq = (x0 + 10, y, x0 + 10 + cb, y + cb)
            _rect(self.draw, sq, t.field, t.border)
            if checked:
                _rect(self.draw, (sq[0] + 3, sq[1] + 3, sq[2] - 3, sq[3] - 3), t.accent)
            self.text(sq[2] + 6, y + (cb - text_size(label, fs)[1]) // 2, label, t.text)
            self.add("checkbox", label, "main", (sq[0], y, sq[0] + width, y + cb), checked=checked)
            y += cb + 10

    def scroll_list(self, box, name: str, row: int) -> None:
        t, (x0, y0, x1, y1) = self.theme, box
        _rect(self.draw, box, t.field, t.border)
        visible = (y1 - y0 - 4) // row
        items = list(vocab.LISTS[name])
        self.rng.shuffle(items)
        total = visible + self.rng.randint(1, 8)  # always more than fits, so it can scroll
        items = (items * (total // len(items) + 1))[:total]
        offset = self.rng.randint(0, total - visible)
        for k, item in enumerate(items[offset:offset + visible]):
            if text_size(item, self.fs)[0] < x1 - x0 - 24:
                self.text(x0 + 5, y0 + 2 + k * row + 3, item, t.text)
        sb = (x1 - 13, y0 + 1, x1 - 1, y1 - 1)  # scrollbar track and thumb
        _rect(self.draw, sb, t.menu_bg)
        track = sb[3] - sb[1]
        th0 = sb[1] + track * offset // total
        th1 = sb[1] + track * (offset + visible) // total
        _rect(self.draw, (sb[0] + 2, th0, sb[2] - 2, max(th1, th0 + 4)), t.border)
        self.add("list", name, "main", box, scroll={"offset": offset, "visible": visible, "total": total})

    def dialog(self) -> None:
        rng, t, fs = self.rng, self.theme, self.fs
        title, message = rng.choice(vocab.DIALOG_TITLES), rng.choice(vocab.DIALOG_MESSAGES)
        main_buttons = [e["label"] for e in self.elements if e["kind"] == "button"]
        shared = [b for b in vocab.DIALOG_BUTTONS if b in main_buttons]
        labels = rng.sample(vocab.DIALOG_BUTTONS, rng.randint(1, 3))
        if shared and rng.random() < 0.7 and not set(shared) & set(labels):  # make duplicates common
            labels[0] = rng.choice(shared)
        field = rng.choice(vocab.DIALOG_FIELDS) if rng.random() < 0.5 else None
        main_fields = [e["label"] for e in self.elements if e["kind"] == "field" and e["label"] in vocab.DIALOG_FIELDS]
        if field and main_fields and rng.random() < 0.6:
            field = rng.choice(main_fields)
        bh, fh, th = fs + 14, fs + 12, fs + 12
        buttons_w = sum(text_size(b, fs)[0] + 32 for b in labels) + 12
        dw = max(buttons_w, text_size(message, fs)[0] + 30, 220)
        dh = th + 12 + fs + 12 + (fh + 10 if field else 0) + bh + 14
        if dw > self.w - 20 or dh > self.h - 20:
            return  # too small a screen for this dialog: draw none rather than clip it
        x0, y0 = rng.randint(10, self.w - dw - 10), rng.randint(10, self.h - dh - 10)
        box = (x0, y0, x0 + dw, y0 + dh)
        _rect(self.draw, (x0 + 4, y0 + 4, box[2] + 4, box[3] + 4), (0, 0, 0))  # shadow
        self.dialog_box = [x0, y0, box[2] + 4, box[3] + 4]
        for e in self.elements:  # main-window elements under the dialog cannot be seen or clicked
            e["occluded"] = overlaps(e["box"], self.dialog_box)
        y = self.frame(box, title, "dialog") + 10
        self.text(x0 + 15, y, message, t.text)
        y += fs + 12
        if field:
            self.field(x0 + 15, box[2] - 15, y, field, text_size(field + ":", fs)[0] + 10, "dialog")
        x = box[2] - 12
        for label in labels:
            x = self.button(x, box[3] - 12 - bh, label, "dialog") - 8


# ---------------------------------------------------------------------------- instructions
def _pick_target(rng: random.Random, elements: list[dict], actions: tuple[str, ...]):
    """(element index, action dict) for a random visible element that supports an allowed action."""
    options: dict[str, list[tuple[int, dict]]] = {a: [] for a in actions}
    for i, e in enumerate(elements):
        if e["occluded"]:
            continue
        if "click" in options and e["kind"] in CLICK_KINDS:
            options["click"].append((i, {"kind": "click"}))
        if "type" in options and e["kind"] == "field":
            options["type"].append((i, {"kind": "type", "text": rng.choice(vocab.TYPED_TEXT)}))
        if "scroll" in options and e["kind"] == "list":
            s = e["scroll"]
            dirs = (["up"] if s["offset"] > 0 else []) + (["down"] if s["offset"] + s["visible"] < s["total"] else [])
            options["scroll"].append((i, {"kind": "scroll", "direction": rng.choice(dirs)}))
    usable = [a for a in actions if options[a]]
    if not usable:
        return None
    pool = options[rng.choice(usable)]
    # duplicate labels are the hard case (the instruction must name the window): favour them when present
    dup = [(i, act) for i, act in pool if _twins(elements[i], elements)]
    return rng.choice(dup if dup and rng.random() < 0.5 else pool)


def _twins(target: dict, elements: list[dict]) -> list[dict]:
    return [e for e in elements if e is not target and e["kind"] == target["kind"] and e["label"] == target["label"]]


def _instruction(target: dict, elements: list[dict], action: dict) -> str:
    kind, label = target["kind"], target["label"]
    in_window = " in the dialog" if target["window"] == "dialog" else " in the main window"
    where = in_window if _twins(target, elements) else ""
    if kind == "button":
        return f"Click the '{label}' button{where}"
    if kind == "menu":
        return f"Open the '{label}' menu"
    if kind == "icon":
        return f"Click the '{label}' icon in the toolbar"
    if kind == "checkbox":
        return f"{'Uncheck' if target['checked'] else 'Check'} the '{label}' checkbox"
    if kind == "close":
        return f"Close the '{label}' {'dialog' if target['window'] == 'dialog' else 'window'}"
    if kind == "field":
        return f"Type '{action['text']}' into the '{label}' field{where}"
    if kind == "list":
        return f"Scroll {action['direction']} in the {label} list"
    raise AssertionError(f"no instruction for element kind {kind!r}")
