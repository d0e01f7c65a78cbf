"""Late fusion of per-frame recognizer outputs (models/baselines.py) on hand-made logits.

Each frame "reads" a string by putting logit `s` on the string's character in every slot (0 on the
other 35 classes), so the per-frame log-probabilities are known in closed form:
log p(target) = s - log(e^s + 35), log p(other) = -log(e^s + 35). The expected answers below are
derived from that by hand (the derivation is written next to each case).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ksrnet.models.baselines import FUSIONS, FusedReading, fuse
from ksrnet.models.parseq import decode_constrained, layout_log_probs
from ksrnet.plates import CHAR_TO_INDEX, CHARSET, DIGITS, LAYOUTS, LETTERS, Layout, layout_masks, matches_layout

MASKS = torch.from_numpy(layout_masks())
C = len(CHARSET)
B, M = LAYOUTS.index(Layout.BRAZILIAN), LAYOUTS.index(Layout.MERCOSUR)


def frame(text: str, strength: float | list[float]) -> torch.Tensor:
    """(7, C) logits: `strength` (per slot, or one for all) on each character of `text`, 0 elsewhere."""
    strengths = [strength] * 7 if np.isscalar(strength) else strength
    logits = torch.zeros(7, C)
    for slot, (ch, s) in enumerate(zip(text, strengths)):
        logits[slot, CHAR_TO_INDEX[ch]] = s
    return logits


def track(*frames: torch.Tensor) -> torch.Tensor:
    return torch.stack(frames)


def text_of(r: FusedReading) -> str:
    return "".join(CHARSET[i] for i in r.indices)


def run(rule: str, chars: torch.Tensor, layouts: torch.Tensor | None = None) -> FusedReading:
    if layouts is None:
        layouts = torch.zeros(chars.shape[0], len(LAYOUTS))
    return fuse(rule, chars, layouts, MASKS)


def assert_syntax(r: FusedReading) -> None:
    text = text_of(r)
    layout = LAYOUTS[r.layout_index]
    assert matches_layout(text, layout), f"{text!r} breaks the {layout.value} syntax {layout.pattern}"


# ---------------------------------------------------------------------------------------------
# Two moderate frames read ABC1234 (Brazilian), one very confident frame reads ABC1Z34 (Mercosur).
#
# Only slot 4 differs. Under Brazilian slot 4 must be a digit and its best is '2'; under Mercosur it
# must be a letter and its best is 'Z'. Summed log-probs (product rule), with s_m the moderate and
# s_c the confident strength, Zm = e^s_m + 35, Zc = e^s_c + 35:
#   Brazilian slot 4 ('2'): 2 (s_m - log Zm) + (0 - log Zc)
#   Mercosur  slot 4 ('Z'): 2 (0 - log Zm) + (s_c - log Zc)
# Every other slot holds the same character in both layouts and cancels, so Mercosur wins slot
# scores iff s_c > 2 s_m (plus the difference of summed layout log-probs, 0 with zero layout logits).


@pytest.mark.parametrize("s_conf, product_text", [(10.0, "ABC1Z34"), (5.0, "ABC1234")])
def test_two_moderate_frames_against_one_confident(s_conf, product_text):
    s_mod = 3.0  # 2 * 3 = 6: 10 > 6 so the product follows the confident frame, 5 < 6 so it does not
    chars = track(frame("ABC1234", s_mod), frame("ABC1234", s_mod), frame("ABC1Z34", s_conf))
    assert text_of(run("char_majority", chars)) == "ABC1234"
    assert text_of(run("string_majority", chars)) == "ABC1234"
    assert text_of(run("product", chars)) == product_text
    assert LAYOUTS[run("product", chars).layout_index] == (Layout.MERCOSUR if product_text[4] == "Z" else Layout.BRAZILIAN)
    single = run("single", chars)
    # Single best: a frame's confidence is ~prod of its slot probabilities, so the frame at s=10
    # (p ~ e^10/(e^10+25) per letter slot) beats a frame at s=3 (p ~ e^3/(e^3+25) ~ 0.45); at s=5
    # (p ~ 0.86 / 0.94) it still beats the s=3 frames.
    assert text_of(single) == "ABC1Z34"
    assert LAYOUTS[single.layout_index] == Layout.MERCOSUR


def test_product_and_majority_disagree_with_layout_evidence():
    # Same frames, s_c = 10, plus layout logits: moderate frames [1, 0] (lean Brazilian), the
    # confident one [0, 3] (Mercosur). Summed layout log-probs: Brazilian 2 log sig(1) + log sig(-3)
    # = -3.675, Mercosur 2 log sig(-1) + log sig(3) = -2.675: Mercosur gets +1 more, total margin
    # 10 - 6 + 1 = 5 in favour of ABC1Z34.
    chars = track(frame("ABC1234", 3.0), frame("ABC1234", 3.0), frame("ABC1Z34", 10.0))
    layouts = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 3.0]])
    product = fuse("product", chars, layouts, MASKS)
    majority = fuse("string_majority", chars, layouts, MASKS)
    assert text_of(product) == "ABC1Z34" and product.layout_index == M
    assert text_of(majority) == "ABC1234" and majority.layout_index == B
    assert text_of(fuse("char_majority", chars, layouts, MASKS)) == "ABC1234"
    # Flip the strengths the other way (s_c = 5 < 6) and make the layouts favour Brazilian: the
    # product now agrees with the majority.
    chars = track(frame("ABC1234", 3.0), frame("ABC1234", 3.0), frame("ABC1Z34", 5.0))
    layouts = torch.tensor([[2.0, 0.0], [2.0, 0.0], [0.0, 1.0]])
    assert text_of(fuse("product", chars, layouts, MASKS)) == "ABC1234"


def test_logit_mean_hand_computed():
    # Mean logits at slot 4: '2' gets (3 + 3 + 0) / 3 = 2, 'Z' gets 10 / 3 = 3.33, everything else 0.
    # Under Brazilian the best slot-4 log-prob is 2 - log Z4, under Mercosur 3.33 - log Z4 (same Z4),
    # and the other slots are equal in both layouts: Mercosur wins by 1.33 -> ABC1Z34.
    chars = track(frame("ABC1234", 3.0), frame("ABC1234", 3.0), frame("ABC1Z34", 10.0))
    assert text_of(run("logit_mean", chars)) == "ABC1Z34"
    # With 2 x 6 vs 10 the mean is 4 vs 3.33: Brazilian wins.
    chars = track(frame("ABC1234", 6.0), frame("ABC1234", 6.0), frame("ABC1Z34", 10.0))
    assert text_of(run("logit_mean", chars)) == "ABC1234"


def test_char_majority_differs_from_string_majority():
    # Slot 2: C, D, C -> C; slot 6: 4, 4, 5 -> 4. Per-slot majority builds ABC1234, a string no
    # frame read. The three whole strings are all different (one vote each): the tie goes to the
    # most confident frame, here ABD1234 (strength 6 against 3).
    chars = track(frame("ABC1234", 3.0), frame("ABD1234", 6.0), frame("ABC1235", 3.0))
    assert text_of(run("char_majority", chars)) == "ABC1234"
    assert text_of(run("string_majority", chars)) == "ABD1234"
    assert text_of(run("single", chars)) == "ABD1234"
    # Move the confidence to the third frame: the string tie now goes to ABC1235, char vote unchanged.
    chars = track(frame("ABC1234", 3.0), frame("ABD1234", 3.0), frame("ABC1235", 6.0))
    assert text_of(run("char_majority", chars)) == "ABC1234"
    assert text_of(run("string_majority", chars)) == "ABC1235"


def test_char_majority_tie_goes_to_the_higher_mean_probability():
    # Two frames disagree at slot 2 only (C at strength 2, D at strength 5): one vote each, the mean
    # probability of D is higher.
    chars = track(frame("ABC1234", [4, 4, 2, 4, 4, 4, 4]), frame("ABD1234", [4, 4, 5, 4, 4, 4, 4]))
    assert text_of(run("char_majority", chars)) == "ABD1234"
    chars = track(frame("ABC1234", [4, 4, 5, 4, 4, 4, 4]), frame("ABD1234", [4, 4, 2, 4, 4, 4, 4]))
    assert text_of(run("char_majority", chars)) == "ABC1234"


def test_string_majority_counts_votes_before_confidence():
    # Two weak ABC1234 votes beat one very strong XYZ9876.
    chars = track(frame("ABC1234", 2.0), frame("ABC1234", 2.0), frame("XYZ9876", 12.0))
    assert text_of(run("string_majority", chars)) == "ABC1234"
    assert text_of(run("single", chars)) == "XYZ9876"


# ---------------------------------------------------------------------------------------------
# Syntax: every rule's reading obeys the layout it reports, however the logits lean.


@pytest.mark.parametrize("rule", FUSIONS)
def test_digits_in_letter_slots_are_never_read(rule):
    # Every slot strongly favours the digit '8'; letters get a small, slot-specific preference.
    chars = torch.zeros(3, 7, C)
    chars[:, :, CHAR_TO_INDEX["8"]] = 9.0
    for slot, ch in enumerate("QRSTUVW"):
        chars[:, slot, CHAR_TO_INDEX[ch]] = 1.0
    r = run(rule, chars)
    assert_syntax(r)
    text = text_of(r)
    assert text[:3] == "QRS"  # the best letters, since '8' is forbidden there
    assert text[3] == "8" and text[5:] == "88"
    # Slot 4: a digit under Brazilian ('8'), else the best letter 'U'. '8' is far more probable
    # (e^9 vs e^1), so the Brazilian reading wins.
    assert text == "QRS8888" and r.layout_index == B


@pytest.mark.parametrize("rule", FUSIONS)
def test_letters_in_digit_slots_are_never_read(rule):
    chars = torch.zeros(2, 7, C)
    chars[:, :, CHAR_TO_INDEX["K"]] = 9.0
    r = run(rule, chars)
    assert_syntax(r)
    # Slot 4 prefers a letter: Mercosur; slots 3, 5, 6 must be digits (all tied at logit 0).
    assert r.layout_index == M
    assert text_of(r)[:3] == "KKK" and text_of(r)[4] == "K"
    assert all(text_of(r)[i] in DIGITS for i in (3, 5, 6))


@pytest.mark.parametrize("rule", FUSIONS)
@pytest.mark.parametrize("seed", range(6))
def test_random_logits_obey_syntax_and_confidence_is_a_probability(rule, seed):
    g = torch.Generator().manual_seed(seed)
    f = 1 + seed % 5
    chars = torch.randn(f, 7, C, generator=g) * 4
    chars[..., : len(DIGITS)] += 3.0 * (seed % 2)  # odd seeds: digits favoured everywhere
    layouts = torch.randn(f, 2, generator=g) * 3
    r = fuse(rule, chars, layouts, MASKS, topk=3)
    assert_syntax(r)
    assert 0.0 <= r.confidence <= 1.0
    assert 0.0 <= r.layout_prob <= 1.0
    assert all(0.0 <= p <= 1.0 for p in r.char_probs) and len(r.char_probs) == 7
    assert r.confidence == pytest.approx(math.prod(r.char_probs) * r.layout_prob, rel=1e-5)
    # Top-k alternatives are sorted and their first entry is at least the chosen character's prob.
    assert len(r.topk_indices) == 7 and all(len(row) == 3 for row in r.topk_indices)
    for row_p, p in zip(r.topk_probs, r.char_probs):
        assert list(row_p) == sorted(row_p, reverse=True)
        assert row_p[0] >= p - 1e-6


# ---------------------------------------------------------------------------------------------
# Confidence values


def test_single_frame_confidence_closed_form():
    # One frame, ABC1234 at strength s, layout logits [a, 0]. Within Brazilian the letter slots
    # normalise over 26 letters: e^s / (e^s + 25); digit slots over 10 digits: e^s / (e^s + 9).
    # Layout posterior: softmax of layout log-prob + sum over slots of the log mass the layout allows;
    # the layouts differ only at slot 4 where Brazilian allows (e^s + 9) / Zs and Mercosur 26 / Zs.
    s, a = 3.0, 0.5
    chars = frame("ABC1234", s)[None]
    r = fuse("product", chars, torch.tensor([[a, 0.0]]), MASKS)
    es = math.exp(s)
    p_letter, p_digit = es / (es + 25), es / (es + 9)
    posterior_b = 1 / (1 + math.exp(-(a + math.log(es + 9) - math.log(26))))
    assert text_of(r) == "ABC1234" and r.layout_index == B
    assert r.char_probs == pytest.approx([p_letter] * 3 + [p_digit] * 4, rel=1e-5)
    assert r.layout_prob == pytest.approx(posterior_b, rel=1e-5)
    assert r.confidence == pytest.approx(p_letter**3 * p_digit**4 * posterior_b, rel=1e-5)


def test_agreeing_frames_make_the_product_more_confident_than_one_frame():
    one = frame("ABC1234", 3.0)
    agree = track(one, one, one)
    single = run("single", agree)
    product = run("product", agree)
    assert text_of(product) == text_of(single) == "ABC1234"
    assert product.confidence > single.confidence + 0.2
    # Three identical frames: the product's slot log-probs are 3x one frame's, so a letter slot
    # normalises e^{3 s} / (e^{3 s} + 25) (the 35 shared -log Z terms cancel within the slot).
    assert product.char_probs[0] == pytest.approx(math.exp(9) / (math.exp(9) + 25), rel=1e-5)
    # Averaging identical logits changes nothing: logit_mean equals one frame.
    assert run("logit_mean", agree).confidence == pytest.approx(run("product", one[None]).confidence, rel=1e-5)


def test_disagreement_lowers_the_product_confidence():
    agree = track(frame("ABC1234", 4.0), frame("ABC1234", 4.0))
    disagree = track(frame("ABC1234", 4.0), frame("ABD1234", 4.0))
    assert run("product", disagree).confidence < run("product", agree).confidence
    # Slot 2, summed log-probs: C and D each get 4 - 2 log Z, the other 24 letters -2 log Z, so
    # C's share among letters is e^4 / (2 e^4 + 24) = 0.41, and D's the same (an exact tie).
    r = run("product", disagree)
    assert text_of(r)[2] in "CD"
    assert r.char_probs[2] == pytest.approx(math.exp(4) / (2 * math.exp(4) + 24), rel=1e-5)


@pytest.mark.parametrize("seed", range(4))
def test_one_frame_all_rules_agree(seed):
    g = torch.Generator().manual_seed(100 + seed)
    chars = torch.randn(1, 7, C, generator=g) * 3
    layouts = torch.randn(1, 2, generator=g)
    readings = {rule: fuse(rule, chars, layouts, MASKS) for rule in FUSIONS}
    ref = readings["product"]
    for rule, r in readings.items():
        assert r.indices == ref.indices, rule
        assert r.layout_index == ref.layout_index, rule
        assert r.confidence == pytest.approx(ref.confidence, rel=1e-5), rule
        assert r.char_probs == pytest.approx(ref.char_probs, rel=1e-5), rule


def test_numpy_masks_and_half_precision_inputs_are_accepted():
    chars = track(frame("ABC1D23", 5.0), frame("ABC1D23", 5.0)).half()
    layouts = torch.tensor([[0.0, 2.0], [0.0, 2.0]]).half()
    for rule in FUSIONS:
        r = fuse(rule, chars, layouts, layout_masks())
        assert text_of(r) == "ABC1D23" and r.layout_index == M, rule


@pytest.mark.parametrize("rule", ["char_majority", "string_majority"])
def test_majority_layout_probability_is_the_mean_posterior_with_three_layouts(rule):
    # With more than two layouts, a frame that chose another layout gives the voted one its own
    # posterior, not 1 - p(its chosen layout). A third layout with the Brazilian syntax keeps the
    # char evidence equal, so the layout logits alone set the posteriors.
    masks = torch.cat([MASKS, MASKS[B:B + 1]])
    chars = track(frame("ABC1234", 3.0), frame("ABC1234", 3.0), frame("ABC1234", 3.0))
    layouts = torch.log(torch.tensor([[0.2, 0.3, 0.5], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]]))
    posterior = decode_constrained(*layout_log_probs(chars, layouts, masks)).layout_posterior
    r = fuse(rule, chars, layouts, masks)
    assert r.layout_prob == pytest.approx(float(posterior[:, r.layout_index].mean()), rel=1e-5)


# ---------------------------------------------------------------------------------------------
# Bad inputs


def test_unknown_rule():
    with pytest.raises(ValueError, match="unknown fusion 'median'"):
        run("median", track(frame("ABC1234", 3.0)))


@pytest.mark.parametrize("rule", FUSIONS)
def test_mismatched_frame_counts(rule):
    with pytest.raises(ValueError, match="same F"):
        fuse(rule, torch.zeros(3, 7, C), torch.zeros(2, 2), MASKS)


@pytest.mark.parametrize("rule", FUSIONS)
def test_zero_frames(rule):
    with pytest.raises(ValueError, match="at least one frame"):
        fuse(rule, torch.zeros(0, 7, C), torch.zeros(0, 2), MASKS)


def test_wrong_ranks():
    with pytest.raises(ValueError):
        fuse("product", torch.zeros(7, C), torch.zeros(1, 2), MASKS)
    with pytest.raises(ValueError):
        fuse("product", torch.zeros(1, 7, C), torch.zeros(2), MASKS)


def test_fusion_names_are_the_rule_table():
    assert set(FUSIONS) == {"single", "product", "logit_mean", "char_majority", "string_majority"}
    assert LETTERS[0] == CHARSET[10]  # the index arithmetic above relies on digits first


def test_a_temperature_changes_confidences_and_never_readings():
    """Dividing the logits by T before fusing moves the frame `single` picks and the majorities' tie-breaks;
    fuse(temperature=T) keeps every rule's T = 1 reading and scores it at T."""
    gen = torch.Generator().manual_seed(7)
    moved = 0
    for _ in range(150):
        chars = torch.randn(3, 7, C, generator=gen) * 3
        layouts = torch.randn(3, len(LAYOUTS), generator=gen)
        for rule in FUSIONS:
            plain = fuse(rule, chars, layouts, MASKS)
            for t in (0.4, 3.0):
                scaled = fuse(rule, chars / t, layouts / t, MASKS)
                calibrated = fuse(rule, chars, layouts, MASKS, temperature=t)
                assert (calibrated.indices, calibrated.layout_index) == (plain.indices, plain.layout_index)
                if (scaled.indices, scaled.layout_index) == (plain.indices, plain.layout_index):
                    # Same reading: the same probabilities as fusing the divided logits.
                    assert calibrated.confidence == pytest.approx(scaled.confidence, rel=1e-5, abs=1e-12)
                    assert calibrated.char_probs == pytest.approx(scaled.char_probs, rel=1e-5, abs=1e-12)
                else:
                    moved += 1
                    assert calibrated.confidence != pytest.approx(plain.confidence, rel=1e-3)
    assert moved > 0  # the old way (dividing first) did change readings on these tracks


@pytest.mark.parametrize("t", [0.0, -1.0, float("inf"), float("nan")])
def test_fuse_refuses_a_temperature_that_is_not_positive_and_finite(t):
    with pytest.raises(ValueError, match="temperature"):
        fuse("product", torch.zeros(1, 7, C), torch.zeros(1, 2), MASKS, temperature=t)
