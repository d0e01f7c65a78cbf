"""PARSeq recognizer: shapes, config, PLM masks (by construction and functionally), decoding-mode
agreement on a toy it has memorised, syntax-constrained decoding, traceability."""

from __future__ import annotations

import dataclasses
import itertools
import warnings

import pytest
import torch
import torch.nn.functional as F

from ksrnet import plates
from ksrnet.models.parseq import (
    MASKED_LOGP,
    Parseq,
    ParseqConfig,
    adapt_to_config,
    build_perm_attention_mask,
    cloze_mask,
    decode_constrained,
    layout_log_probs,
    resize_pos_embed,
    sample_permutations,
    topk_alternatives,
)

C = len(plates.CHARSET)
S = plates.NUM_SLOTS
MASKS = torch.as_tensor(plates.layout_masks())


def micro_config(**overrides) -> ParseqConfig:
    # 16x32 images -> 4x4 patches: seconds for everything below.
    base = dict(img_h=16, img_w=32, embed_dim=32, enc_depth=1, enc_heads=2, dec_depth=1, dec_heads=2,
                mlp_ratio=2.0, dropout=0.0)
    return ParseqConfig(**{**base, **overrides})


def images(batch: int, config: ParseqConfig, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, config.in_chans, config.img_h, config.img_w, generator=g) * 2 - 1


def model(config: ParseqConfig | None = None, seed: int = 0) -> Parseq:
    torch.manual_seed(seed)
    return Parseq(config or micro_config()).eval()


# -- shapes and config ----------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mode", ["nar", "ar"])
def test_output_shapes(batch, mode):
    cfg = micro_config(dec_depth=2)
    m = model(cfg)
    with torch.no_grad():
        out = m(images(batch, cfg), mode=mode)
        assert out.char_logits.shape == (batch, S, C)
        assert out.layout_logits.shape == (batch, cfg.num_layouts)
        perms = sample_permutations(4, S, torch.Generator().manual_seed(0))
        targets = torch.randint(0, C, (batch, S))
        assert m.plm_logits(images(batch, cfg), targets, perms).shape == (4, batch, S, C)
    assert torch.isfinite(out.char_logits).all()


def test_wrong_image_size_and_mode_are_rejected():
    cfg = micro_config()
    m = model(cfg)
    with pytest.raises(ValueError, match="expected images"):
        m(torch.zeros(1, 3, cfg.img_h + 1, cfg.img_w))
    with pytest.raises(ValueError, match="mode"):
        m(images(1, cfg), mode="beam")
    with pytest.raises(ValueError, match="refine_iters"):
        m(images(1, cfg), refine_iters=-1)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(embed_dim=30, enc_heads=4), "divisible by enc_heads"),
        (dict(embed_dim=32, dec_heads=3), "divisible by dec_heads"),
        (dict(img_w=30), "patches"),
        (dict(num_perms=5), "even"),
        (dict(num_perms=0), "num_perms"),
        (dict(dropout=1.0), "dropout"),
        (dict(refine_iters=-1), "refine_iters"),
        (dict(enc_depth=-1), "enc_depth"),
        (dict(embed_dim=32.0), "embed_dim"),
        (dict(mlp_ratio=0), "mlp_ratio"),
        (dict(num_classes=1), "num_classes"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        micro_config(**overrides)


def test_config_dict_round_trip_and_presets():
    cfg = micro_config(refine_iters=2)
    assert ParseqConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="unknown ParseqConfig keys: bogus"):
        ParseqConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    assert ParseqConfig.preset("small") == ParseqConfig.small()
    assert ParseqConfig.base().embed_dim == 768 and ParseqConfig.small().dec_heads == 12
    assert ParseqConfig.tiny(dropout=0.0).dropout == 0.0
    with pytest.raises(ValueError, match="unknown PARSeq preset"):
        ParseqConfig.preset("huge")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.embed_dim = 64  # type: ignore[misc]


def test_syntax_masks_must_match_the_plate_spec():
    with pytest.raises(ValueError, match="syntax masks"):
        Parseq(micro_config(num_classes=10))
    Parseq(micro_config(num_classes=10), syntax_masks=torch.ones(2, S, 10, dtype=torch.bool))


def test_checkpoint_state_dict_round_trip():
    cfg = micro_config()
    a, b = model(cfg, seed=0), model(cfg, seed=1)
    b.load_state_dict(a.state_dict())
    x = images(2, cfg)
    with torch.no_grad():
        assert torch.equal(a(x).char_logits, b(x).char_logits)
    assert not any("mask" in k for k in a.state_dict())


# -- permutations and masks -----------------------------------------------------------------------


def test_sample_permutations_structure():
    g = torch.Generator().manual_seed(3)
    perms = sample_permutations(12, S, g)
    assert perms.shape == (12, S) and perms.dtype == torch.long
    assert torch.equal(perms[0], torch.arange(S))
    assert torch.equal(perms[1], torch.arange(S).flip(0))
    for p in perms:
        assert sorted(p.tolist()) == list(range(S))
    for i in range(0, 12, 2):
        assert torch.equal(perms[i + 1], perms[i].flip(0))
    assert len({tuple(p.tolist()) for p in perms}) == 12
    with pytest.raises(ValueError, match="even"):
        sample_permutations(5, S, g)
    # Only 3! = 6 orders of 3 slots exist: all are used before any repeats.
    assert len({tuple(p.tolist()) for p in sample_permutations(6, 3, g)}) == 6
    assert sample_permutations(8, 3, g).shape == (8, 3)


def test_perm_mask_never_shows_the_query_its_own_or_later_tokens():
    g = torch.Generator().manual_seed(0)
    perms = sample_permutations(20, S, g)
    masks = build_perm_attention_mask(perms)
    assert masks.shape == (20, S, S + 1) and masks.dtype == torch.bool
    for perm, mask in zip(perms, masks):
        assert torch.equal(mask, build_perm_attention_mask(perm))
        for i, slot in enumerate(perm.tolist()):
            row = mask[slot]
            assert row[0]  # BOS always visible
            earlier = {t for t in perm[:i].tolist()}
            for t in range(S):
                assert bool(row[1 + t]) == (t in earlier)
    identity = build_perm_attention_mask(torch.arange(S))
    assert torch.equal(identity[:, 1:], torch.ones(S, S, dtype=torch.bool).tril(-1))


def test_cloze_mask_hides_only_the_own_token():
    mask = cloze_mask(S)
    assert mask[:, 0].all()
    assert torch.equal(mask[:, 1:], ~torch.eye(S, dtype=torch.bool))


@pytest.mark.parametrize("dec_depth", [1, 2])
def test_plm_logits_do_not_depend_on_later_tokens(dec_depth):
    cfg = micro_config(dec_depth=dec_depth)
    m = model(cfg)
    g = torch.Generator().manual_seed(1)
    perms = sample_permutations(6, S, g)
    x = images(2, cfg)
    targets = torch.randint(0, C, (2, S), generator=g)
    with torch.no_grad():
        base = m.plm_logits(x, targets, perms)
        for k, perm in enumerate(perms.tolist()):
            for i, slot in enumerate(perm):
                changed = targets.clone()
                later = perm[i:]
                changed[:, later] = (changed[:, later] + 1 + torch.randint(0, C - 1, (2, len(later)), generator=g)) % C
                out = m.plm_logits(x, changed, perms)
                torch.testing.assert_close(out[k, :, slot], base[k, :, slot], rtol=0, atol=1e-6)
            # ...while an earlier token does reach the last query (the test would be vacuous otherwise)
            changed = targets.clone()
            changed[:, perm[0]] = (changed[:, perm[0]] + 1) % C
            assert not torch.allclose(m.plm_logits(x, changed, perms)[k, :, perm[-1]], base[k, :, perm[-1]])


@pytest.mark.parametrize("mode", ["ar", "nar"])
def test_fed_back_tokens_respect_the_union_syntax_mask(mode):
    cfg = micro_config()
    m = model(cfg)
    digits = torch.tensor([c in plates.DIGITS for c in plates.CHARSET])
    with torch.no_grad():
        m.head.bias[digits] = 100.0  # the raw head wants digits everywhere
    fed: list[torch.Tensor] = []
    hook = m.token_embed.register_forward_hook(lambda _m, args, _out: fed.append(args[0].clone()))
    with torch.no_grad():
        out = m(images(3, cfg), mode=mode, refine_iters=1)
    hook.remove()
    assert out.char_logits.argmax(-1)[:, :3].lt(10).all()  # returned logits stay raw
    union = MASKS.any(0)
    slot_tokens = [t for t in fed if t.shape[1] > 1 or not (t == C).all()]
    assert slot_tokens
    for tokens in slot_tokens:
        n = tokens.shape[1]
        assert union[torch.arange(n), tokens].all()


# -- decoding modes on a memorised toy ------------------------------------------------------------

TOY_TEXTS = ["ABC1234", "XYZ9K87", "QWE5R12", "MNB0000", "JKL4M56", "PPP7777", "ZAQ1W23", "RTY8U90"]


def test_ar_nar_and_refine_agree_on_a_memorised_toy():
    cfg = micro_config()
    torch.manual_seed(0)
    m = Parseq(cfg)
    g = torch.Generator().manual_seed(0)
    x = images(len(TOY_TEXTS), cfg, seed=5)
    tok = plates.Tokenizer()
    targets = torch.tensor([tok.encode(t) for t in TOY_TEXTS])
    layouts = torch.tensor([plates.LAYOUTS.index(plates.infer_layout(t)) for t in TOY_TEXTS])
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(200):
        perms = sample_permutations(cfg.num_perms, S, g)
        memory = m.encode(x)
        logits = m.plm_decode(memory, targets, perms)
        loss = F.cross_entropy(logits.reshape(-1, C), targets.repeat(cfg.num_perms, 1).reshape(-1))
        loss = loss + F.cross_entropy(m.layout_logits_from_memory(memory), layouts)
        opt.zero_grad()
        loss.backward()
        opt.step()
    m.eval()
    with torch.no_grad():
        readings = {
            (mode, iters): m(x, mode=mode, refine_iters=iters).char_logits.argmax(-1)
            for mode in ("ar", "nar")
            for iters in (0, 1, 2)
        }
        layout = m(x).layout_logits.argmax(-1)
    for key, reading in readings.items():
        assert [tok.decode(r) for r in reading] == TOY_TEXTS, key
    assert torch.equal(layout, layouts)


# -- syntax-constrained decoding ------------------------------------------------------------------


def test_syntax_masks_never_emit_a_forbidden_character():
    g = torch.Generator().manual_seed(0)
    digits = torch.tensor([c in plates.DIGITS for c in plates.CHARSET])
    tok = plates.Tokenizer()
    for trial in range(200):
        logits = torch.randn(16, S, C, generator=g) * (1 + 20 * (trial % 3))
        logits[..., digits] += 50.0 * (trial % 2)  # strongly favour digits everywhere
        layout_logits = torch.randn(16, 2, generator=g) * 5
        per_layout, layout_logp = layout_log_probs(logits, layout_logits, MASKS)
        if trial % 4 == 3:  # product fusion over 5 "frames"
            frames = torch.randn(5, 16, S, C, generator=g) * 30
            fused = [layout_log_probs(f, layout_logits, MASKS) for f in frames]
            per_layout = sum(p for p, _ in fused)
            layout_logp = sum(lp for _, lp in fused)
        assert torch.isfinite(per_layout).all()
        reading = decode_constrained(per_layout, layout_logp)
        for row, layout_index in zip(reading.indices, reading.layout_index):
            text = tok.decode(row)
            assert plates.matches_layout(text, plates.LAYOUTS[int(layout_index)]), text
            assert all(ch in plates.LETTERS for ch in text[:3]) and all(ch in plates.DIGITS for ch in text[5:])
        assert torch.all((reading.char_probs > 0) & (reading.char_probs <= 1))
        torch.testing.assert_close(reading.layout_posterior.sum(-1), torch.ones(16))


def test_layout_log_probs_keep_the_charset_normalisation():
    logits = torch.zeros(1, S, C)
    per_layout, layout_logp = layout_log_probs(logits, torch.tensor([[0.0, 1.0]]), MASKS)
    assert per_layout.shape == (1, 2, S, C) and layout_logp.shape == (1, 2)
    assert (per_layout[0][~MASKS] == MASKED_LOGP).all()
    # Not renormalised within the layout: letters-vs-digits mass is the layout evidence.
    torch.testing.assert_close(per_layout[0][MASKS], torch.full((int(MASKS.sum()),), -torch.log(torch.tensor(36.0)).item()))
    torch.testing.assert_close(layout_logp.exp().sum(-1), torch.ones(1))
    assert layout_logp[0, 1] > layout_logp[0, 0]


def test_confidence_is_the_exact_posterior_of_the_reading():
    # Small enough to enumerate: 3 slots, 4 classes, 2 layouts with different allowed sets.
    g = torch.Generator().manual_seed(4)
    masks = torch.tensor([[[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]],
                          [[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1]]], dtype=torch.bool)
    for _ in range(20):
        frames = [layout_log_probs(torch.randn(1, 3, 4, generator=g) * 2, torch.randn(1, 2, generator=g), masks)
                  for _ in range(3)]
        per_layout = sum(p for p, _ in frames)
        layout_logp = sum(lp for _, lp in frames)
        r = decode_constrained(per_layout, layout_logp)
        joint = {}
        for layout in range(2):
            for reading in itertools.product(range(4), repeat=3):
                if all(masks[layout, s, c] for s, c in enumerate(reading)):
                    score = layout_logp[0, layout] + sum(per_layout[0, layout, s, c] for s, c in enumerate(reading))
                    joint[(layout, reading)] = score.double().exp().item()
        total = sum(joint.values())
        best = max(joint, key=joint.get)
        assert (int(r.layout_index), tuple(r.indices[0].tolist())) == best
        confidence = r.layout_posterior[0, r.layout_index[0]] * r.char_probs[0].prod()
        assert confidence.item() == pytest.approx(joint[best] / total, rel=1e-4)
        posterior_l0 = sum(v for (lay, _), v in joint.items() if lay == 0) / total
        assert r.layout_posterior[0, 0].item() == pytest.approx(posterior_l0, rel=1e-4)


def _logits_for(text_scores: list[dict[str, float]]) -> torch.Tensor:
    """Per slot: the named characters get the given logit, all others -10."""
    logits = torch.full((1, S, C), -10.0)
    for slot, scores in enumerate(text_scores):
        for ch, value in scores.items():
            logits[0, slot, plates.CHAR_TO_INDEX[ch]] = value
    return logits


def test_decode_constrained_picks_the_better_layout():
    tok = plates.Tokenizer()
    # Slot 4 is a clear "7" (Brazilian reading ABC1734) but a letter there is weak: Brazilian wins.
    logits = _logits_for([{"A": 5}, {"B": 5}, {"C": 5}, {"1": 5}, {"7": 5, "T": 1}, {"3": 5}, {"4": 5}])
    r = decode_constrained(*layout_log_probs(logits, torch.zeros(1, 2), MASKS))
    assert tok.decode(r.indices[0]) == "ABC1734" and plates.LAYOUTS[int(r.layout_index)] == plates.Layout.BRAZILIAN
    assert r.layout_posterior[0, 0] > 0.9
    # A strong "T" in slot 4: Mercosur ABC1T34.
    logits = _logits_for([{"A": 5}, {"B": 5}, {"C": 5}, {"1": 5}, {"T": 5, "7": 1}, {"3": 5}, {"4": 5}])
    r = decode_constrained(*layout_log_probs(logits, torch.zeros(1, 2), MASKS))
    assert tok.decode(r.indices[0]) == "ABC1T34" and plates.LAYOUTS[int(r.layout_index)] == plates.Layout.MERCOSUR
    # An ambiguous slot 4: the layout prior decides, and the posterior follows it.
    logits = _logits_for([{"A": 5}, {"B": 5}, {"C": 5}, {"1": 5}, {"T": 3, "7": 3}, {"3": 5}, {"4": 5}])
    r = decode_constrained(*layout_log_probs(logits, torch.tensor([[0.0, 3.0]]), MASKS))
    assert tok.decode(r.indices[0]) == "ABC1T34"
    assert 0.9 < r.layout_posterior[0, 1] < 1
    # Char probabilities: the chosen layout's slot distributions over its allowed characters.
    per_layout, _ = layout_log_probs(logits, torch.zeros(1, 2), MASKS)
    torch.testing.assert_close(r.char_probs[0], torch.softmax(per_layout[0, 1], -1).max(-1).values)
    assert r.char_probs[0, 4] > 0.99  # T given Mercosur, although T and 7 split the charset mass


def test_decode_constrained_on_summed_frames_is_product_fusion():
    g = torch.Generator().manual_seed(2)
    frames = [layout_log_probs(torch.randn(3, S, C, generator=g) * 3, torch.randn(3, 2, generator=g), MASKS)
              for _ in range(5)]
    per_layout = sum(p for p, _ in frames)
    layout_logp = sum(lp for _, lp in frames)
    r = decode_constrained(per_layout, layout_logp)
    chosen = per_layout[torch.arange(3), r.layout_index]
    product = chosen.exp() / chosen.exp().sum(-1, keepdim=True)  # fine in float32 here: values are small
    torch.testing.assert_close(r.char_probs, product.gather(-1, r.indices.unsqueeze(-1)).squeeze(-1))


def test_topk_alternatives():
    logits = _logits_for([{"A": 5, "R": 4, "8": 9}, {"B": 5}, {"C": 5}, {"1": 5}, {"7": 5}, {"3": 5}, {"4": 5}])
    per_layout, layout_logp = layout_log_probs(logits, torch.zeros(1, 2), MASKS)
    r = decode_constrained(per_layout, layout_logp)
    idx, probs = topk_alternatives(per_layout, r.layout_index, 3)
    assert idx.shape == probs.shape == (1, S, 3)
    assert [plates.CHARSET[i] for i in idx[0, 0, :2]] == ["A", "R"]  # the digit 8 is not a candidate
    assert torch.equal(idx[..., 0], r.indices)
    torch.testing.assert_close(probs[..., 0], r.char_probs)
    assert (probs[..., :-1] >= probs[..., 1:]).all()
    with pytest.raises(ValueError, match="k must be"):
        topk_alternatives(per_layout, r.layout_index, 0)


# -- tracing --------------------------------------------------------------------------------------


class _Reader(torch.nn.Module):
    def __init__(self, parseq: Parseq, mode: str, refine_iters: int) -> None:
        super().__init__()
        self.parseq, self.mode, self.refine_iters = parseq, mode, refine_iters

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.parseq(x, mode=self.mode, refine_iters=self.refine_iters)
        return out.char_logits, out.layout_logits


@pytest.mark.parametrize("mode", ["nar", "ar"])
def test_jit_trace_matches_eager(mode):
    cfg = micro_config(dec_depth=2)
    m = model(cfg)
    reader = _Reader(m, mode, refine_iters=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("error", torch.jit.TracerWarning)  # a data-dependent branch would warn
        traced = torch.jit.trace(reader, images(2, cfg))
    for batch in (2, 5):
        x = images(batch, cfg, seed=batch)
        with torch.no_grad():
            expected = reader(x)
            got = traced(x)
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_slot_position_prior_points_each_slot_at_its_own_seventh():
    from ksrnet.models.parseq import slot_position_prior

    rows, cols = 2, 16
    bias = slot_position_prior(7, rows, cols, 0.07)
    assert bias.shape == (7, rows * cols) and (bias <= 0).all()
    best_col = bias.view(7, rows, cols)[:, 0].argmax(-1)
    assert (best_col[1:] > best_col[:-1]).all()  # slot i looks right of slot i-1
    assert best_col[0] <= 2 and best_col[-1] >= cols - 3
    assert torch.equal(bias.view(7, rows, cols)[:, 0], bias.view(7, rows, cols)[:, 1])  # same in every row


class NarLogits(torch.nn.Module):
    """The model's NAR char logits as a single-output module, for torch.jit.trace."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, t):
        return self.inner(t, mode="nar").char_logits


def test_slot_prior_model_decodes_and_traces():
    config = micro_config(slot_prior_sigma=0.07)
    model = Parseq(config).eval()
    assert any(name == "slot_prior_scale" for name, _ in model.named_parameters())
    x = images(2, config)
    nar = model(x, mode="nar").char_logits
    ar = model(x, mode="ar").char_logits
    assert nar.shape == ar.shape == (2, 7, 36) and torch.isfinite(nar).all() and torch.isfinite(ar).all()
    with torch.no_grad():
        traced = torch.jit.trace(NarLogits(model), x)
        torch.testing.assert_close(traced(x), nar)
    # Turning the prior's learned strength to zero is exactly the model without the prior.
    plain = Parseq(micro_config()).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if k != "slot_prior_scale"})
    with torch.no_grad():
        model.slot_prior_scale.zero_()
    torch.testing.assert_close(model(x, mode="nar").char_logits, plain(x, mode="nar").char_logits)


def test_cnn_stem_keeps_the_token_grid_and_traces():
    config = micro_config(stem="cnn", stem_channels=8, pos_embed_init="zero", slot_prior_sigma=0.07)
    model = Parseq(config)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.patch_embed.modules())
    assert torch.count_nonzero(model.pos_embed) == 0
    x = images(3, config)
    model.train()
    model(x, mode="nar")  # one training-mode pass moves the BatchNorm statistics off their start
    model.eval()
    memory = model.encode(x)
    assert memory.shape == (3, config.num_patches, config.embed_dim)
    with torch.no_grad():
        traced = torch.jit.trace(NarLogits(model), x)
        torch.testing.assert_close(traced(x), model(x, mode="nar").char_logits)
    # Eval mode uses running statistics: a frame's reading does not depend on its batch mates.
    torch.testing.assert_close(model(x[:1], mode="nar").char_logits, model(x, mode="nar").char_logits[:1])


@pytest.mark.parametrize("bad", [dict(stem="vgg"), dict(pos_embed_init="random")])
def test_bad_stem_or_position_init_is_rejected(bad):
    with pytest.raises(ValueError, match="stem|pos_embed_init"):
        micro_config(**bad)


def test_encoder_without_vit_blocks_reads_and_exposes_stem_features():
    config = micro_config(stem="cnn", stem_channels=8, enc_depth=0, pos_embed_init="zero")
    model = Parseq(config).eval()
    x = images(2, config)
    memory, feats = model.encode(x, return_intermediates=True)
    assert len(model.blocks) == 0 and memory.shape == (2, config.num_patches, config.embed_dim)
    assert len(feats) == 1 and feats[0].shape == memory.shape  # a perceptual loss still has features
    assert model(x, mode="ar").char_logits.shape == (2, 7, 36)


def test_resize_pos_embed_keeps_smooth_tables_and_refuses_wrong_shapes():
    rows, cols, dim = 4, 8, 6
    # A table linear in the column index is resampled to the same linear ramp over the new grid.
    col = (torch.arange(cols, dtype=torch.float32) + 0.5) / cols
    table = col[None, :, None].expand(rows, cols, dim).reshape(1, rows * cols, dim)
    out = resize_pos_embed(table, (rows, cols), (rows, 6))
    assert out.shape == (1, rows * 6, dim)
    new_col = (torch.arange(6, dtype=torch.float32) + 0.5) / 6
    expected = new_col[None, :, None].expand(rows, 6, dim).reshape(1, rows * 6, dim)
    # Bilinear resampling is exact on a ramp away from the borders (it clamps at the edges).
    inner = torch.zeros(rows, 6, dtype=torch.bool)
    inner[:, 1:-1] = True
    assert torch.allclose(out[0][inner.reshape(-1)], expected[0][inner.reshape(-1)], atol=1e-5)
    assert resize_pos_embed(table, (rows, cols), (rows, cols)) is table
    with pytest.raises(ValueError):
        resize_pos_embed(table, (rows, cols + 1), (rows, 6))


def test_adapt_to_config_keeps_every_weight_but_the_position_table():
    torch.manual_seed(0)
    model = Parseq(micro_config(img_w=64)).eval()
    with torch.no_grad():
        model.pos_embed.normal_()
    narrow = adapt_to_config(model, micro_config(img_w=48)).eval()
    assert narrow.config.grid == (4, 6) and narrow.pos_embed.shape[1] == 24
    for (name, a), (_, b) in zip(model.state_dict().items(), narrow.state_dict().items()):
        if name != "pos_embed":
            assert torch.equal(a, b), name
    out = narrow(images(2, narrow.config))
    assert out.char_logits.shape == (2, S, C)
    with pytest.raises(ValueError, match="more than the input size"):
        adapt_to_config(model, micro_config(img_w=48, embed_dim=64))


def test_adapt_to_config_grows_blocks_that_start_as_the_identity_and_then_learn():
    torch.manual_seed(0)
    model = Parseq(micro_config(enc_depth=0, dec_depth=1)).eval()
    deeper = adapt_to_config(model, micro_config(enc_depth=2, dec_depth=2)).eval()
    assert len(deeper.blocks) == 2 and len(deeper.dec_layers) == 2
    x = images(3, model.config)
    for mode in ("nar", "ar"):
        a, b = model(x, mode=mode), deeper(x, mode=mode)
        assert torch.allclose(a.char_logits, b.char_logits, atol=1e-6)
        assert torch.allclose(a.layout_logits, b.layout_logits, atol=1e-6)
    # The zeroed projections get gradients at once, so the added blocks do not stay the identity.
    deeper.train()
    perms = sample_permutations(2, S, torch.Generator().manual_seed(0))
    targets = torch.randint(0, C, (3, S))
    deeper.plm_logits(x, targets, perms).logsumexp(-1).mean().backward()
    for module in (deeper.blocks[0], deeper.blocks[1], deeper.dec_layers[1]):
        assert module.mlp[-1].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="fewer encoder blocks"):
        adapt_to_config(deeper, micro_config(enc_depth=1, dec_depth=2))


@pytest.mark.parametrize("narrow_channels, wide_channels", [(4, 6), (2, 3)])  # ends at embed_dim; ends in a 1x1
def test_adapt_to_config_widens_the_cnn_stem_without_changing_what_it_computes(narrow_channels, wide_channels):
    torch.manual_seed(0)
    model = Parseq(micro_config(stem="cnn", stem_channels=narrow_channels))
    x = images(4, model.config)
    model.train()
    model(x)  # batch-norm statistics that are not the fresh ones
    wide = adapt_to_config(model, micro_config(stem="cnn", stem_channels=wide_channels))
    assert wide.patch_embed[0][0].out_channels == wide_channels
    for train_mode in (False, True):  # running statistics, then the batch's own
        model.train(train_mode)
        wide.train(train_mode)
        with torch.no_grad():
            a, b = model(x), wide(x)
        assert torch.allclose(a.char_logits, b.char_logits, atol=1e-5)
        assert torch.allclose(a.layout_logits, b.layout_logits, atol=1e-5)
    # The zero weights that read the added channels learn from the first step.
    wide.train()
    perms = sample_permutations(2, S, torch.Generator().manual_seed(0))
    wide.plm_logits(x, torch.randint(0, C, (4, S)), perms).logsumexp(-1).mean().backward()
    reader = wide.patch_embed[1][0]
    assert reader.weight.grad[:, narrow_channels:].abs().sum() > 0


def test_adapt_to_config_refuses_to_narrow_or_widen_another_stem():
    model = Parseq(micro_config(stem="cnn", stem_channels=4))
    with pytest.raises(ValueError, match="can only grow"):
        adapt_to_config(model, micro_config(stem="cnn", stem_channels=3))
    conv = Parseq(micro_config(stem="conv", stem_channels=4))
    with pytest.raises(ValueError, match="only for the cnn stem"):
        adapt_to_config(conv, micro_config(stem="conv", stem_channels=6))
    # 4 channels reach embed_dim without a final 1x1 convolution, 2 channels need one.
    with pytest.raises(ValueError, match="layer count"):
        adapt_to_config(Parseq(micro_config(stem="cnn", stem_channels=2)), micro_config(stem="cnn", stem_channels=4))
