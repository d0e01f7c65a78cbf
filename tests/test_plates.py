import pytest
from hypothesis import given, strategies as st

from ksrnet.plates import (
    CHARSET, DIGITS, LAYOUTS, LETTERS, Layout, PlateTextError, Tokenizer, infer_layout, layout_masks,
    normalize_text, slot_mask, text_problems, validate_text,
)


def test_masks_follow_the_layout_patterns():
    br, me = slot_mask(Layout.BRAZILIAN), slot_mask(Layout.MERCOSUR)
    assert br.shape == (7, 36)
    letter_cols = [CHARSET.index(c) for c in LETTERS]
    digit_cols = [CHARSET.index(c) for c in DIGITS]
    for slot in range(3):
        assert br[slot, letter_cols].all() and not br[slot, digit_cols].any()
    assert br[4, digit_cols].all() and not br[4, letter_cols].any()
    assert me[4, letter_cols].all() and not me[4, digit_cols].any()
    assert (br.sum(1) > 0).all() and (me.sum(1) > 0).all()
    # The layouts differ only in the fifth slot.
    assert [s for s in range(7) if not (br[s] == me[s]).all()] == [4]
    assert layout_masks().shape == (len(LAYOUTS), 7, 36)


@pytest.mark.parametrize(
    "raw,text,layout",
    [("ABC1234", "ABC1234", Layout.BRAZILIAN), (" abc-1234 ", "ABC1234", Layout.BRAZILIAN),
     ("bde 6e26", "BDE6E26", Layout.MERCOSUR)],
)
def test_labels_are_normalised(raw, text, layout):
    assert validate_text(raw) == (text, layout)


@pytest.mark.parametrize("bad", ["AB1234", "ABC12345", "AB01234", "ABC1D2X", "ÀBC1234", "", "ABC_234"])
def test_invalid_labels_are_reported_not_dropped(bad):
    assert text_problems(bad)
    with pytest.raises(PlateTextError, match="invalid plate text"):
        validate_text(bad)


def test_layout_mismatch_is_reported():
    with pytest.raises(PlateTextError, match="Brazilian"):
        validate_text("ABC1D23", Layout.BRAZILIAN)
    assert infer_layout("ABC1D23") is Layout.MERCOSUR
    assert infer_layout("ABCD123") is None
    assert Layout.parse("mercosur") is Layout.MERCOSUR
    with pytest.raises(PlateTextError):
        Layout.parse("European")


plate_texts = st.builds(
    lambda l, d1, m, d2: "".join(l) + d1 + m + "".join(d2),
    st.lists(st.sampled_from(LETTERS), min_size=3, max_size=3),
    st.sampled_from(DIGITS),
    st.sampled_from(LETTERS + DIGITS),
    st.lists(st.sampled_from(DIGITS), min_size=2, max_size=2),
)


@given(plate_texts)
def test_tokenizer_round_trip(text):
    tok = Tokenizer()
    ids = tok.encode(text)
    assert len(ids) == 7 and all(0 <= i < tok.num_classes for i in ids)
    assert tok.decode(ids) == text
    assert infer_layout(text) in LAYOUTS


def test_tokenizer_rejects_bad_input():
    tok = Tokenizer()
    with pytest.raises(PlateTextError):
        tok.encode("ABC123")
    with pytest.raises(PlateTextError):
        tok.encode("ABC12#4")
    with pytest.raises(ValueError):
        tok.decode([0] * 6)
    assert normalize_text("a b-c") == "ABC"
