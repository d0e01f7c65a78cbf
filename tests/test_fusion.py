"""STFT fusion: config, shapes for any T/H/W, the shifted-window mask (structure and, through
gradients, the exact dependency set of every token), padding and missing frames never leaking into
real tokens, and the temporal pooling."""

from __future__ import annotations

import itertools

import pytest
import torch

from ksrnet.models.fusion import (
    PRESET_NAMES,
    STFT,
    FusionConfig,
    STFTBlock,
    padded_grid,
    relative_position_index,
    shift_region_mask,
    window_and_shift,
    window_merge,
    window_partition,
)


def micro(**overrides) -> FusionConfig:
    base = dict(dim=8, depth=2, heads=2, window=(2, 4, 4), mlp_ratio=2.0, dropout=0.0)
    return FusionConfig(**{**base, **overrides})


def model(config: FusionConfig | None = None, seed: int = 0) -> STFT:
    torch.manual_seed(seed)
    m = STFT(config or micro()).eval()
    # Non-trivial pooling scores (they start at zero = uniform pooling).
    torch.nn.init.normal_(m.pool_score.weight, std=0.5)
    return m


def feats(b: int, t: int, c: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, t, c, h, w, generator=torch.Generator().manual_seed(seed))


# -- config ---------------------------------------------------------------------------------------


def test_config_validation_and_round_trip():
    cfg = FusionConfig()
    assert FusionConfig.from_dict(cfg.to_dict()) == cfg
    assert FusionConfig.from_dict({**cfg.to_dict(), "window": [1, 4, 4]}).window == (1, 4, 4)
    for bad in (dict(dim=0), dict(heads=3), dict(window=(2, 8)), dict(window=(0, 8, 8)),
                dict(mlp_ratio=0), dict(dropout=1.0), dict(depth=True)):
        with pytest.raises(ValueError):
            FusionConfig(**bad)
    with pytest.raises(ValueError):
        FusionConfig.from_dict({"dims": 3})
    for name in PRESET_NAMES:
        FusionConfig.preset(name)


def test_window_clamp_and_shift():
    assert window_and_shift((5, 17, 48), (2, 8, 8), True) == ((2, 8, 8), (1, 4, 4))
    assert window_and_shift((1, 17, 48), (2, 8, 8), True) == ((1, 8, 8), (0, 4, 4))
    # An axis that fits in one window is clamped and never shifted.
    assert window_and_shift((2, 6, 48), (2, 8, 8), True) == ((2, 6, 8), (0, 0, 4))
    assert window_and_shift((5, 17, 48), (2, 8, 8), False) == ((2, 8, 8), (0, 0, 0))
    assert padded_grid((5, 17, 45), (2, 8, 8)) == (6, 24, 48)


def test_window_partition_round_trip():
    x = torch.randn(2, 4, 8, 12, 3)
    win = (2, 4, 4)
    parts = window_partition(x, win)
    assert parts.shape == (2, 2 * 2 * 3, 32, 3)
    # The first window is the corner block in (t, h, w) raster order.
    assert torch.equal(parts[0, 0], x[0, :2, :4, :4].reshape(32, 3))
    assert torch.equal(window_merge(parts, win, (4, 8, 12)), x)


def test_relative_position_index_is_by_displacement():
    table = (2, 4, 4)
    full = relative_position_index(table, table)
    rows = (2 * 2 - 1) * (2 * 4 - 1) * (2 * 4 - 1)
    assert full.min() == 0 and full.max() == rows - 1
    assert torch.equal(full.diagonal(), torch.full((32,), rows // 2))  # zero displacement: centre row
    # A clamped window uses the same row for the same displacement.
    small = relative_position_index((1, 3, 2), table)
    coords = list(itertools.product(range(1), range(3), range(2)))
    coords_full = list(itertools.product(range(2), range(4), range(4)))
    for i, j in itertools.product(range(len(coords)), repeat=2):
        fi, fj = coords_full.index(coords[i]), coords_full.index(coords[j])
        assert small[i, j] == full[fi, fj]


# -- shapes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("t", [1, 3, 5])
@pytest.mark.parametrize("hw", [(17, 48), (19, 45)])
def test_shapes_any_t_and_odd_sizes(t, hw):
    h, w = hw
    cfg = micro()
    m = model(cfg)
    with torch.no_grad():
        out = m(feats(2, t, cfg.dim, h, w))
    assert out.frames.shape == (2, t, cfg.dim, h, w)
    assert out.fused.shape == (2, cfg.dim, h, w)
    assert out.weights.shape == (2, t, h, w)
    assert torch.allclose(out.weights.sum(1), torch.ones(2, h, w))
    assert torch.isfinite(out.frames).all() and torch.isfinite(out.fused).all()


def test_default_window_and_backward():
    cfg = FusionConfig(dim=8, heads=2, depth=2)  # the default (2, 8, 8) window
    m = model(cfg)
    x = feats(1, 5, cfg.dim, 17, 48).requires_grad_(True)
    out = m(x)
    out.fused.square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    assert all(p.grad is not None for p in m.parameters())


def test_rejects_bad_inputs():
    m = model()
    with pytest.raises(ValueError):
        m(torch.randn(1, 3, 4, 5, 5))  # wrong channels
    with pytest.raises(ValueError):
        m(torch.randn(3, 8, 5, 5))  # not 5-D
    with pytest.raises(ValueError):
        m(torch.randn(2, 3, 8, 5, 5), torch.tensor([[True, False, False], [False, False, False]]))


# -- the shifted-window mask ----------------------------------------------------------------------


def _original(rolled: int, shift: int, size: int) -> int:
    return (rolled + shift) % size


def test_shift_region_mask_structure_exact():
    grid, win, shift = (4, 8, 12), (2, 4, 4), (1, 2, 2)
    mask = shift_region_mask(grid, win, shift)
    n = win[0] * win[1] * win[2]
    windows = list(itertools.product(*(range(g // w) for g, w in zip(grid, win))))
    assert mask.shape == (len(windows), n, n)
    local = list(itertools.product(*(range(w) for w in win)))
    for k, widx in enumerate(windows):
        for i, j in itertools.product(range(n), repeat=2):
            # Original (unrolled) coordinates of both tokens: neighbours iff closer than a window on
            # every axis (across the wrap they are at least size - window + 1 apart).
            oi = [_original(widx[a] * win[a] + local[i][a], shift[a], grid[a]) for a in range(3)]
            oj = [_original(widx[a] * win[a] + local[j][a], shift[a], grid[a]) for a in range(3)]
            expected = all(abs(oi[a] - oj[a]) < win[a] for a in range(3))
            assert bool(mask[k, i, j]) == expected, (k, i, j)
    # Interior windows (no wrapped token) are unmasked; the corner window has 8 regions (2 per axis).
    assert mask[0].all()
    corner = mask[-1]
    assert int(corner.sum()) == sum(c * c for c in [1 * 2 * 2, 1 * 2 * 2] * 4)
    assert shift_region_mask(grid, win, (0, 0, 0)).all()


def _dependency_set(grid, win, shift, query):
    """Tokens whose content may reach ``query`` through one shifted block (same rolled window,
    genuine neighbours)."""
    def rolled_window(o):
        return tuple(((o[a] - shift[a]) % grid[a]) // win[a] for a in range(3))
    deps = set()
    for o in itertools.product(*(range(g) for g in grid)):
        if rolled_window(o) == rolled_window(query) and all(abs(o[a] - query[a]) < win[a] for a in range(3)):
            deps.add(o)
    return deps


@pytest.mark.parametrize("query", [(3, 7, 7), (0, 0, 0), (3, 0, 7), (1, 3, 5), (2, 6, 1)])
def test_shifted_block_dependencies_exact(query):
    """Gradient of one output token w.r.t. the input is non-zero exactly on the tokens of its
    shifted window that were its neighbours before the roll: content that wrapped around never
    reaches it (a perturbation there cannot change it)."""
    cfg = micro(window=(2, 4, 4))
    torch.manual_seed(0)
    block = STFTBlock(cfg, shifted=True).eval()
    for p in block.parameters():  # generic weights so that every allowed path is non-zero
        torch.nn.init.normal_(p, std=0.3)
    grid = (4, 8, 8)
    win, shift = window_and_shift(grid, cfg.window, True)
    assert shift == (1, 2, 2)
    x = torch.randn(1, *grid, cfg.dim, requires_grad=True)
    valid = torch.ones(1, *grid, dtype=torch.bool)
    y = block(x, valid, grid)
    y[(0, *query)].sum().backward()
    reached = {tuple(i.tolist()) for i in (x.grad[0].abs().sum(-1) > 0).nonzero()}
    assert reached == _dependency_set(grid, win, shift, query)


def test_shifted_block_wrap_perturbation():
    """Functional version: perturbing the token at the far side of the wrap leaves the corner
    token's output unchanged, perturbing a true neighbour changes it."""
    cfg = micro(window=(1, 4, 4))
    torch.manual_seed(1)
    block = STFTBlock(cfg, shifted=True).eval()
    for p in block.parameters():
        torch.nn.init.normal_(p, std=0.3)
    grid = (1, 8, 8)
    x = torch.randn(1, *grid, cfg.dim)
    valid = torch.ones(1, *grid, dtype=torch.bool)
    base = block(x, valid, grid)[0, 0, 7, 7]
    far = x.clone()
    # (A random perturbation: a constant one would vanish in the LayerNorm.)
    far[0, 0, 0, 0] += 5.0 * torch.randn(cfg.dim)  # lands in (7, 7)'s shifted window via the roll
    near = x.clone()
    near[0, 0, 6, 6] += 5.0 * torch.randn(cfg.dim)
    assert torch.equal(block(far, valid, grid)[0, 0, 7, 7], base)
    assert (block(near, valid, grid)[0, 0, 7, 7] - base).abs().max() > 1e-3


# -- padding and missing frames -------------------------------------------------------------------


def test_padded_tokens_do_not_affect_real_tokens():
    cfg = micro(depth=4)
    m = model(cfg)
    t, h, w = 3, 5, 7
    grid = (t, h, w)
    win, _ = window_and_shift(grid, cfg.window, False)
    tp, hp, wp = padded_grid(grid, win)
    assert (tp, hp, wp) == (4, 8, 8)
    x = torch.zeros(2, tp, hp, wp, cfg.dim)
    x[:, :t, :h, :w] = torch.randn(2, t, h, w, cfg.dim)
    valid = torch.zeros(2, tp, hp, wp, dtype=torch.bool)
    valid[:, :t, :h, :w] = True
    garbage = x.clone()
    garbage[~valid] = 100.0 * torch.randn(int((~valid).sum()), cfg.dim)
    with torch.no_grad():
        a = m.forward_tokens(x, valid, grid)[:, :t, :h, :w]
        b = m.forward_tokens(garbage, valid, grid)[:, :t, :h, :w]
    assert torch.allclose(a, b, atol=1e-6, rtol=0)
    # And forward (which pads with zeros) agrees with the token-level path.
    with torch.no_grad():
        out = m(x[:, :t, :h, :w].permute(0, 1, 4, 2, 3))
    assert torch.allclose(out.frames, a.permute(0, 1, 4, 2, 3), atol=1e-6, rtol=0)


def test_missing_frame_content_never_leaks():
    cfg = micro(depth=4)
    m = model(cfg)
    b, t, h, w = 2, 5, 9, 11
    x = feats(b, t, cfg.dim, h, w)
    mask = torch.tensor([[True, False, True, True, True], [True, True, True, False, False]])
    y = x.clone()
    y[~mask] = 50.0 * torch.randn_like(y[~mask])
    z = x.clone()
    z[~mask] = float("nan")
    with torch.no_grad():
        out_x, out_y, out_z = m(x, mask), m(y, mask), m(z, mask)
    for out in (out_y, out_z):
        assert torch.allclose(out.fused, out_x.fused, atol=1e-6, rtol=0)
        assert torch.allclose(out.frames, out_x.frames, atol=1e-6, rtol=0)
    assert (out_x.frames[~mask] == 0).all()
    assert (out_x.weights[~mask] == 0).all()
    assert torch.allclose(out_x.weights.sum(1), torch.ones(b, h, w))


def test_missing_frames_within_blocks_token_level():
    """Below ``forward`` (which zeroes missing frames on entry): tokens of a missing frame, however
    large, never reach the real ones through attention."""
    cfg = micro(depth=4)
    m = model(cfg)
    grid = (4, 4, 8)
    x = torch.randn(1, *grid, cfg.dim)
    valid = torch.ones(1, *grid, dtype=torch.bool)
    valid[:, 2] = False
    y = x.clone()
    y[:, 2] = 100.0 * torch.randn_like(y[:, 2])
    with torch.no_grad():
        a = m.forward_tokens(x, valid, grid)
        b = m.forward_tokens(y, valid, grid)
    keep = valid[0]
    assert torch.allclose(a[0][keep], b[0][keep], atol=1e-6, rtol=0)


def test_trailing_missing_frames_equal_shorter_track():
    """A 3-frame track padded to T=5 with two missing frames reads exactly like the 3-frame track."""
    cfg = micro(depth=4)
    m = model(cfg)
    x3 = feats(1, 3, cfg.dim, 7, 10)
    x5 = torch.cat([x3, torch.randn(1, 2, cfg.dim, 7, 10)], dim=1)
    mask = torch.tensor([[True, True, True, False, False]])
    with torch.no_grad():
        a, b = m(x3), m(x5, mask)
    assert torch.allclose(a.fused, b.fused, atol=1e-5, rtol=0)
    assert torch.allclose(a.frames, b.frames[:, :3], atol=1e-5, rtol=0)


def test_single_frame_fused_is_that_frame():
    cfg = micro()
    m = model(cfg)
    with torch.no_grad():
        out = m(feats(2, 1, cfg.dim, 6, 9))
    assert torch.equal(out.weights, torch.ones_like(out.weights))
    assert torch.allclose(out.fused, out.frames[:, 0])


def test_pooling_is_order_invariant():
    """With no temporal mixing in the blocks (window t = 1), reordering the frames permutes the
    per-frame outputs and leaves the fused map unchanged: the pooling has no favourite frame."""
    cfg = micro(window=(1, 4, 4), depth=2)
    m = model(cfg)
    x = feats(1, 4, cfg.dim, 6, 9)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        a, b = m(x), m(x[:, perm])
    assert torch.allclose(b.frames, a.frames[:, perm], atol=1e-6)
    assert torch.allclose(b.fused, a.fused, atol=1e-6)
