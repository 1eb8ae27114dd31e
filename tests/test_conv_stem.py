"""The convolutional stem of audit-demo: same token grid as the patchify layer, used when loading and training."""

import open_clip
import pytest
import torch

from audit.scanner.conv_stem import ConvStem, add_conv_stem
from audit.scanner.models import build_model
from audit.scanner.profiles import profile


def test_stem_keeps_the_token_grid_of_the_patchify_layer():
    torch.manual_seed(0)
    plain = open_clip.create_model("audit-demo")
    patchify = plain.visual.conv1
    x = torch.randn(2, 3, 64, 64)
    stemmed = add_conv_stem(open_clip.create_model("audit-demo"), (8, 8, 8))
    assert isinstance(stemmed.visual.conv1, ConvStem)
    assert stemmed.visual.conv1(x).shape == patchify(x).shape == (2, 128, 8, 8)
    assert stemmed.encode_image(x).shape == plain.encode_image(x).shape


def test_stem_stages_must_match_the_patch_size():
    with pytest.raises(ValueError, match="log2"):
        ConvStem(64, 8, (16, 32))
    with pytest.raises(ValueError, match="log2"):
        ConvStem(64, 12, (16, 32, 64))


def test_a_stem_is_built_when_asked_for_and_found_in_weights(tmp_path):
    demo = build_model("audit-demo", conv_stem=True)
    assert isinstance(demo.visual.conv1, ConvStem) and profile("audit-demo").conv_stem is not None
    assert isinstance(build_model("audit-demo").visual.conv1, torch.nn.Conv2d)  # the bundled weights have none
    with pytest.raises(ValueError, match="no conv stem"):
        build_model("audit-tiny", conv_stem=True)
    # weights saved from a stemmed model load back into a fresh one, batch-norm statistics included
    from audit.demo.train import save_weights

    demo.visual.conv1[1].running_mean.fill_(0.25)
    save_weights(demo, tmp_path / "w.safetensors")
    again = build_model("audit-demo", str(tmp_path / "w.safetensors"))
    assert torch.allclose(again.visual.conv1[1].running_mean, torch.full((32,), 0.25))
    assert again.visual.conv1[1].num_batches_tracked.dtype == torch.long


def test_weights_saved_without_a_stem_still_load(tmp_path):
    from audit.demo.train import save_weights

    torch.manual_seed(0)
    plain = open_clip.create_model("audit-demo")
    save_weights(plain, tmp_path / "plain.safetensors")
    again = build_model("audit-demo", str(tmp_path / "plain.safetensors"))
    assert isinstance(again.visual.conv1, torch.nn.Conv2d)
    assert torch.equal(again.visual.conv1.weight, plain.visual.conv1.weight.half().float())
