import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from smallvit.data.batch import Mix, View
from smallvit.data.mixing import MixConfig, apply_mix, mixed_cross_entropy


def constant_images(n: int, h: int = 13, w: int = 11) -> torch.Tensor:
    """Sample i is the constant i + 1, so every pixel differs between two different samples."""
    return (torch.arange(n, dtype=torch.float32) + 1).view(n, 1, 1, 1).expand(n, 3, h, w).contiguous()


def mix(images: torch.Tensor, cfg: MixConfig, seed: int = 0, epoch: int = 0) -> View:
    view = View(images, torch.arange(len(images)), torch.arange(len(images)))
    return apply_mix(view, cfg, torch.Generator().manual_seed(seed), epoch)


def is_cutmix(out: View, images: torch.Tensor) -> torch.Tensor:
    """bool [B]: every pixel is either the sample's own or its partner's."""
    own, other = out.images == images, out.images == images[out.mix.partner]
    return (own | other).flatten(1).all(1)


@pytest.mark.parametrize("mode", ["batch", "elem"])
@pytest.mark.parametrize("seed", range(5))
def test_cutmix_lam_is_the_kept_area_exactly(mode, seed):
    images = constant_images(6)
    out = mix(images, MixConfig(cutmix_alpha=1.0, mode=mode), seed)
    pasted = (out.images != images).flatten(1).float().mean(1)
    assert torch.equal(out.mix.lam, 1 - pasted)
    assert is_cutmix(out, images).all()


def test_cutmix_lam_stays_exact_per_sample_with_boxes_clipped_at_the_border():
    images = constant_images(64)
    out = mix(images, MixConfig(cutmix_alpha=0.3, mode="elem"))
    changed = (out.images != images)[:, 0]
    assert torch.equal(out.mix.lam, 1 - changed.flatten(1).float().mean(1))
    assert len(out.mix.lam.unique()) > 10 and changed[:, [0, -1], :].any() and changed[:, :, [0, -1]].any()


@pytest.mark.parametrize("mode", ["batch", "elem"])
def test_mixup_is_the_lam_weighted_sum(mode):
    images = torch.rand(5, 3, 7, 9, generator=torch.Generator().manual_seed(1))
    out = mix(images, MixConfig(mixup_alpha=0.8, mode=mode))
    lam = out.mix.lam.view(-1, 1, 1, 1)
    torch.testing.assert_close(out.images, lam * images + (1 - lam) * images[out.mix.partner])
    assert torch.equal(out.mix.partner, torch.tensor([4, 3, 2, 1, 0]))
    changed = (out.images - images).abs().flatten(1).amax(1) > 1e-3
    assert changed.tolist() == [True, True, False, True, True]  # every sample but the middle one, its own partner
    assert (len(out.mix.lam.unique()) == 1) == (mode == "batch")


def test_no_mix_when_prob_is_zero():
    images = constant_images(4)
    out = mix(images, MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0, mode="elem"))
    assert torch.equal(out.images, images) and torch.equal(out.mix.lam, torch.ones(4))


def test_elem_mode_switches_per_sample():
    images = constant_images(64)
    out = mix(images, MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem"))
    assert 10 < is_cutmix(out, images).sum() < 54


def test_lam_max_of_pair_keeps_the_larger_part():
    out = mix(constant_images(64), MixConfig(mixup_alpha=1.0, mode="elem", lam_max_of_pair=True))
    assert (out.mix.lam >= 0.5).all()


def test_alternate_is_mixup_on_even_epochs_and_cutmix_on_odd():
    images = constant_images(8)
    cfg = MixConfig(mixup_alpha=1.0, cutmix_alpha=1.0, mode="elem", alternate=True)
    assert not is_cutmix(mix(images, cfg, epoch=2), images).any()
    assert is_cutmix(mix(images, cfg, epoch=3), images).all()


def test_same_seed_same_mix():
    images = torch.rand(6, 3, 8, 8)
    cfg = MixConfig(mixup_alpha=0.8, cutmix_alpha=1.0, mode="elem")
    first, second = mix(images, cfg, seed=4), mix(images, cfg, seed=4)
    assert torch.equal(first.images, second.images) and torch.equal(first.mix.lam, second.mix.lam)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({}, "set mixup_alpha or cutmix_alpha"),
        ({"mixup_alpha": 1.0, "alternate": True}, "alternate needs both"),
        ({"mixup_alpha": 1.0, "mode": "pair"}, "mode"),
        ({"mixup_alpha": 1.0, "cutmix_minmax": [0.2, 0.8]}, "cutmix_minmax"),
    ],
)
def test_config_is_validated(fields, message):
    with pytest.raises(ValidationError, match=message):
        MixConfig(**fields)


def naive_mixed_cross_entropy(logits, target, mix, smoothing):
    """Per-sample loop over explicit smoothed one-hot targets."""
    classes = logits.shape[1]
    losses = []
    for i in range(len(logits)):
        log_probs = logits[i].log_softmax(0)
        loss = 0.0
        for weight, label in [(mix.lam[i], target[i]), (1 - mix.lam[i], target[mix.partner[i]])]:
            soft = torch.full((classes,), smoothing / classes)
            soft[label] += 1 - smoothing
            loss = loss + weight * -(soft * log_probs).sum()
        losses.append(loss)
    return torch.stack(losses).mean()


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_mixed_cross_entropy_matches_a_naive_loop(smoothing):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 4, generator=gen)
    target = torch.tensor([0, 3, 1, 1, 2])
    pairing = Mix(partner=torch.tensor([2, 0, 4, 1, 3]), lam=torch.rand(5, generator=gen))
    loss = mixed_cross_entropy(logits, target, pairing, smoothing)
    torch.testing.assert_close(loss, naive_mixed_cross_entropy(logits, target, pairing, smoothing))


def test_mixed_cross_entropy_without_mix_is_cross_entropy():
    logits, target = torch.randn(3, 4), torch.tensor([0, 3, 1])
    expected = F.cross_entropy(logits, target, label_smoothing=0.1)
    torch.testing.assert_close(mixed_cross_entropy(logits, target, None, 0.1), expected)
