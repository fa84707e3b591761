"""Hyena's implicit filter is set up for the training length, as safari's ``l_max``."""
from __future__ import annotations

import pytest
import torch

import mixers


def test_filter_features_follow_the_training_length_not_max_len():
    """A filter built for 64 training positions is the same on them whatever max_len allows later."""
    torch.manual_seed(0)
    short = mixers.build("hyena", 16, 64, filter_width=8)  # max_len = the training length
    torch.manual_seed(0)
    wide = mixers.build("hyena", 16, 256, filter_width=8, train_len=64)
    features, t = wide.filter.positions(256)
    assert t[63].item() == pytest.approx(1.0) and t[-1].item() == pytest.approx(255 / 63)
    ref_features, ref_t = short.filter.positions(64)
    assert torch.allclose(features[:64], ref_features, atol=1e-6) and torch.allclose(t[:64], ref_t, atol=1e-6)
    with torch.no_grad():
        assert torch.allclose(wide.filter(256)[:, :64], short.filter(64), atol=1e-5)
        x = torch.randn(2, 40, 16)
        assert torch.allclose(wide(x), short(x), atol=1e-5)
    # without a training length: normalised by max_len, as before
    torch.manual_seed(0)
    plain = mixers.build("hyena", 16, 256, filter_width=8)
    assert plain.filter.positions(256)[1][-1].item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="train_len"):
        mixers.build("hyena", 16, 64, train_len=65)
