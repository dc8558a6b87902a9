"""Stage-2 training inputs: the exposure augmentation and the service's exposure normalisation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import write_synthetic_pairs

from service.exposure import estimate_exposure
from training.colour_mix import ColourMix
from training.data import ExposureMix, PairedImages, list_pairs, load_rgb
from training.normalisation import ExposureNormalisation


@pytest.fixture(scope="module")
def pairs_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_pairs(tmp_path_factory.mktemp("pairs"), 3, size=(64, 80))


def _sample(dataset: PairedImages, index: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    return dataset[index]


def test_one_draw_applies_the_same_choice_to_crop_and_whole_image() -> None:
    mix = ExposureMix(identity=0.0, gain=1.0, max_gain=8.0, gamma=1.0)
    low = torch.rand(3, 40, 40) * 0.1
    high = torch.rand(3, 40, 40)
    torch.manual_seed(3)
    augment = mix.draw()
    whole = augment(low, high)
    crop = augment(low[:, 5:25, 10:30], high[:, 5:25, 10:30])
    # Same gain and gamma; pow may differ by an ulp between vectorised and scalar lanes.
    torch.testing.assert_close(crop, whole[:, 5:25, 10:30], rtol=1e-6, atol=1e-6)
    assert whole.mean() > low.mean()  # a gain >= 1 (and a gamma <= 1) brightens
    torch.manual_seed(3)
    assert torch.equal(mix.apply(low, high), whole)  # apply() is one draw applied


def test_normalisation_darkens_each_crop_by_the_gain_of_its_whole_image(pairs_root: Path) -> None:
    rule = ExposureNormalisation(reference=0.01, power=1.0)
    plain = PairedImages(pairs_root, crop=32, augment=False)
    normalised = PairedImages(pairs_root, crop=32, augment=False, normalisation=rule)
    for index, pair in enumerate(list_pairs(pairs_root)):
        gain = rule.gain_for(estimate_exposure(load_rgb(pair.low)))
        assert gain < 1.0
        low, high = _sample(plain, index, seed=index)
        low_n, high_n = _sample(normalised, index, seed=index)
        assert torch.equal(high_n, high)  # the target is never normalised
        torch.testing.assert_close(low_n, low * gain, atol=1e-4, rtol=1e-3)


def test_identity_samples_are_normalised_like_a_well_exposed_upload(pairs_root: Path) -> None:
    rule = ExposureNormalisation(reference=0.05, power=0.9)
    dataset = PairedImages(pairs_root, crop=32, augment=False, exposure=ExposureMix(identity=1.0), normalisation=rule)
    pair = list_pairs(pairs_root)[0]
    gain = rule.gain_for(estimate_exposure(load_rgb(pair.high)))
    low, high = _sample(dataset, 0, seed=0)
    torch.testing.assert_close(low, high * gain, atol=1e-4, rtol=1e-3)


def test_reference_zero_leaves_inputs_alone(pairs_root: Path) -> None:
    plain = PairedImages(pairs_root, crop=32, augment=False)
    off = PairedImages(pairs_root, crop=32, augment=False, normalisation=ExposureNormalisation(0.0, 1.0))
    assert torch.equal(_sample(off, 1, seed=5)[0], _sample(plain, 1, seed=5)[0])


def test_colour_samples_change_the_input_only(pairs_root: Path) -> None:
    plain = PairedImages(pairs_root, crop=32, augment=False)
    synthetic = PairedImages(pairs_root, crop=32, augment=False, colour=ColourMix(synthetic=1.0))
    low, high = _sample(plain, 1, seed=5)
    low_s, high_s = _sample(synthetic, 1, seed=5)
    assert torch.equal(high_s, high)  # the target stays the normal-light image
    assert not torch.equal(low_s, low) and low_s.mean() < high.mean()  # a dark capture of it
    with pytest.raises(ValueError, match="cannot be combined"):
        PairedImages(
            pairs_root,
            crop=32,
            colour=ColourMix(recast=0.5),
            normalisation=ExposureNormalisation(reference=0.05, power=1.0),
        )
