"""Network shapes, size, receptive field and the any-size entry point."""

from __future__ import annotations

import pytest
import torch

from model.checkpoint import load_weights, save_weights
from model.network import FRLIE, MIN_SIDE, FRLIEConfig, count_parameters, enhance


def test_default_network_has_about_3_1_million_parameters() -> None:
    model = FRLIE()
    assert model.config == FRLIEConfig(width=32, fr_blocks=4)
    assert 3.05e6 < count_parameters(model) < 3.2e6


def test_encoder_gives_4c_channels_at_quarter_resolution_and_decoder_restores_size() -> None:
    model = FRLIE(FRLIEConfig(width=8, fr_blocks=2)).eval()
    image = torch.rand(2, 3, 32, 48)
    features = model.encoder(image)
    assert features.shape == (2, 32, 8, 12)
    assert model.frnet(features).shape == features.shape
    output = model(image)
    assert output.shape == image.shape
    assert output.min() >= 0.0 and output.max() <= 1.0


@pytest.mark.parametrize("upsample", ["pixelshuffle", "bilinear"])
def test_both_upsampling_modes_build(upsample: str) -> None:
    model = FRLIE(FRLIEConfig(width=8, fr_blocks=1, upsample=upsample)).eval()
    assert model(torch.rand(1, 3, 24, 24)).shape == (1, 3, 24, 24)


@pytest.mark.parametrize("size", [(1, 1), (7, 13), (21, 20), (33, 47), (64, 64)])
def test_enhance_accepts_any_size_and_crops_back(size: tuple[int, int]) -> None:
    model = FRLIE(FRLIEConfig(width=8, fr_blocks=1)).eval()
    image = torch.rand(1, 3, *size)
    assert enhance(model, image).shape == image.shape
    assert MIN_SIDE % 4 == 0


def test_enhance_on_multiple_of_four_equals_plain_forward() -> None:
    model = FRLIE(FRLIEConfig(width=8, fr_blocks=1)).eval()
    image = torch.rand(1, 3, 40, 44)
    with torch.no_grad():
        assert torch.equal(enhance(model, image), model(image).clamp(0, 1))


@pytest.mark.parametrize("blocks", [1, 2])
def test_receptive_radius_matches_measured_gradient_support(blocks: int) -> None:
    """The radius the service tiles with must cover every pixel an output depends on, tightly."""
    torch.manual_seed(0)
    model = FRLIE(FRLIEConfig(width=8, fr_blocks=blocks)).eval()
    size, centre = 256, 128
    measured = 0
    for phase in range(4):  # output pixels at every offset from the 1/4 grid
        image = torch.rand(1, 3, size, size, requires_grad=True)
        model(image)[0, :, centre + phase, centre + phase].sum().backward()
        rows = (image.grad.abs().sum(dim=(0, 1, 3)) > 0).nonzero().flatten()
        measured = max(measured, centre + phase - int(rows.min()), int(rows.max()) - centre - phase)
    assert measured == model.config.receptive_radius


def test_weights_round_trip(tmp_path) -> None:
    model = FRLIE(FRLIEConfig(width=8, fr_blocks=1))
    save_weights(model, tmp_path / "w.pt", step=7)
    loaded, payload = load_weights(tmp_path / "w.pt")
    assert loaded.config == model.config and payload["step"] == 7
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert torch.equal(a, b), name


def test_loading_a_foreign_file_fails_clearly(tmp_path) -> None:
    torch.save({"weights": 1}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="not an FRLIE checkpoint"):
        load_weights(tmp_path / "other.pt")
