"""Plate layouts, charset, per-slot syntax masks and the fixed 7-slot tokenizer.

Brazilian plates read LLLNNNN and Mercosur plates LLLNLNN (L = letter, N = digit). Every model here
emits exactly seven slots; the masks below say which characters each slot may hold per layout, so a
decoder can never put a digit where the layout demands a letter.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

import numpy as np

DIGITS = "0123456789"
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
CHARSET = DIGITS + LETTERS
NUM_SLOTS = 7
CHAR_TO_INDEX = {c: i for i, c in enumerate(CHARSET)}


class Layout(str, enum.Enum):
    BRAZILIAN = "Brazilian"
    MERCOSUR = "Mercosur"

    @property
    def pattern(self) -> str:
        return _PATTERNS[self]

    @classmethod
    def parse(cls, value: "str | Layout") -> "Layout":
        """Accept the annotation spelling, any case, or a Layout; raise PlateTextError otherwise."""
        if isinstance(value, Layout):
            return value
        for layout in cls:
            if str(value).strip().lower() == layout.value.lower():
                return layout
        raise PlateTextError(f"unknown plate layout {value!r} (expected Brazilian or Mercosur)")


_PATTERNS = {Layout.BRAZILIAN: "LLLNNNN", Layout.MERCOSUR: "LLLNLNN"}
LAYOUTS: tuple[Layout, ...] = (Layout.BRAZILIAN, Layout.MERCOSUR)


class PlateTextError(ValueError):
    """A plate label that cannot be normalised into a valid 7-character reading."""


def slot_mask(layout: Layout) -> np.ndarray:
    """(7, len(CHARSET)) bool array: True where the slot may hold that character."""
    mask = np.zeros((NUM_SLOTS, len(CHARSET)), dtype=bool)
    for slot, kind in enumerate(layout.pattern):
        allowed = LETTERS if kind == "L" else DIGITS
        for ch in allowed:
            mask[slot, CHAR_TO_INDEX[ch]] = True
    return mask


def layout_masks() -> np.ndarray:
    """(num_layouts, 7, len(CHARSET)) masks stacked in the order of LAYOUTS."""
    return np.stack([slot_mask(layout) for layout in LAYOUTS])


def normalize_text(text: str) -> str:
    """Upper-case and drop spaces and the printed separator ('ABC-1234', ' abc 1d23 ' are fine)."""
    return re.sub(r"[\s\-\u00b7.]", "", str(text)).upper()


def matches_layout(text: str, layout: Layout) -> bool:
    if len(text) != NUM_SLOTS:
        return False
    for ch, kind in zip(text, layout.pattern):
        if kind == "L" and ch not in LETTERS:
            return False
        if kind == "N" and ch not in DIGITS:
            return False
    return True


def infer_layout(text: str) -> Layout | None:
    """The layout whose syntax the (normalised) text follows, or None."""
    text = normalize_text(text)
    for layout in LAYOUTS:
        if matches_layout(text, layout):
            return layout
    return None


def text_problems(text: str, layout: Layout | None = None) -> list[str]:
    """Human-readable problems with a label; empty when it is a valid plate (of `layout`, if given)."""
    norm = normalize_text(text)
    problems = []
    bad = sorted({c for c in norm if c not in CHAR_TO_INDEX})
    if bad:
        problems.append(f"characters outside A-Z0-9: {''.join(bad)!r}")
    if len(norm) != NUM_SLOTS:
        problems.append(f"{len(norm)} characters, expected {NUM_SLOTS}")
    if problems:
        return problems
    inferred = infer_layout(norm)
    if inferred is None:
        problems.append(f"{norm!r} follows neither LLLNNNN (Brazilian) nor LLLNLNN (Mercosur)")
    elif layout is not None and not matches_layout(norm, layout):
        problems.append(f"{norm!r} does not follow the {layout.value} syntax {layout.pattern}")
    return problems


def validate_text(text: str, layout: Layout | None = None) -> tuple[str, Layout]:
    """Normalise a label and return (text, layout); raise PlateTextError naming every problem."""
    problems = text_problems(text, layout)
    if problems:
        raise PlateTextError(f"invalid plate text {text!r}: " + "; ".join(problems))
    norm = normalize_text(text)
    return norm, layout if layout is not None else infer_layout(norm)  # type: ignore[return-value]


@dataclass(frozen=True)
class Tokenizer:
    """Fixed-length 7-slot encoding: one class index per slot, no BOS/EOS needed at the interface."""

    charset: str = CHARSET
    num_slots: int = NUM_SLOTS

    @property
    def num_classes(self) -> int:
        return len(self.charset)

    def encode(self, text: str) -> list[int]:
        norm = normalize_text(text)
        if len(norm) != self.num_slots:
            raise PlateTextError(f"cannot encode {text!r}: {len(norm)} characters, expected {self.num_slots}")
        try:
            return [self.charset.index(c) for c in norm]
        except ValueError:
            raise PlateTextError(f"cannot encode {text!r}: characters outside {self.charset!r}") from None

    def decode(self, indices) -> str:
        indices = [int(i) for i in indices]
        if len(indices) != self.num_slots:
            raise ValueError(f"expected {self.num_slots} indices, got {len(indices)}")
        return "".join(self.charset[i] for i in indices)
