import pytest
import torch

from marktune.mark.model import (FeatureExtractor, KnowledgeBase, MaskGenerator, ResNetFeatureExtractor,
                            kb_geometry, max_kb_depth)


@pytest.mark.parametrize("size", [32, 84])
def test_every_allowed_depth_produces_latent_vectors(size):
    assert max_kb_depth(size) >= 3
    for depth in range(1, max_kb_depth(size) + 1):
        kb = KnowledgeBase(image_size=size, depth=depth, width=4, latent_dim=16)
        masks = [torch.ones(2, c, 1, 1) for c in kb.channels]
        outs = kb.block_outputs(torch.randn(2, 3, size, size), masks)
        assert len(outs) == depth
        for g, c, o in zip(kb.geometry, kb.channels, outs):
            assert o.shape == (2, c, g.size_out, g.size_out) and g.size_out >= 1
        assert kb(torch.randn(2, 3, size, size), masks).shape == (2, 16)
    with pytest.raises(ValueError, match="allowed depths are 1"):
        kb_geometry(size, max_kb_depth(size) + 1)


def test_paper_knowledge_base_at_32px():
    kb = KnowledgeBase(image_size=32)
    shapes = {n: tuple(p.shape) for n, p in kb.named_parameters()}
    assert shapes == {
        "convs.0.weight": (64, 3, 4, 4), "convs.0.bias": (64,),
        "convs.1.weight": (128, 64, 3, 3), "convs.1.bias": (128,),
        "convs.2.weight": (256, 128, 2, 2), "convs.2.bias": (256,),
        "fc.weight": (128, 256 * 2 * 2), "fc.bias": (128,),
    }
    assert all(c.padding == (0, 0) for c in kb.convs)
    assert kb.dropout.p == 0.5


def test_paper_kernels_at_84px():
    assert [g.kernel for g in kb_geometry(84, 3)] == [10, 8, 2]
    assert [g.size_out for g in kb_geometry(84, 3)] == [37, 15, 7]


def test_block_order_equals_relu_before_pool():
    # the KB pools before ReLU for speed; the spec says conv -> ReLU -> maxpool
    kb = KnowledgeBase(image_size=32, width=8, latent_dim=16)
    x = torch.randn(4, 3, 32, 32)
    conv = kb.convs[0]
    expected = torch.nn.functional.max_pool2d(torch.relu(conv(x)), 2)
    got = kb.block_outputs(x, [torch.ones(4, c, 1, 1) for c in kb.channels])[0]
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("block", [0, 1, 2])
def test_zero_mask_zeroes_that_block(block):
    kb = KnowledgeBase(image_size=32, width=8, latent_dim=16)
    masks = [torch.rand(3, c, 1, 1) + 0.5 for c in kb.channels]
    masks[block] = torch.zeros_like(masks[block])
    outs = kb.block_outputs(torch.randn(3, 3, 32, 32), masks)
    assert torch.count_nonzero(outs[block]) == 0
    others = [o for b, o in enumerate(outs) if b < block]
    assert all(torch.count_nonzero(o) > 0 for o in others)


@pytest.mark.parametrize("hidden,activation", [(0, "relu"), (0, "sigmoid"), (12, "relu")])
def test_mask_generator_one_scale_per_channel(hidden, activation):
    gen = MaskGenerator(latent_dim=16, block_channels=[8, 16, 32], hidden=hidden, activation=activation)
    masks = gen(torch.randn(5, 16))
    assert [tuple(m.shape) for m in masks] == [(5, 8, 1, 1), (5, 16, 1, 1), (5, 32, 1, 1)]
    assert all((m >= 0).all() for m in masks)
    if activation == "sigmoid":
        assert all((m <= 1).all() for m in masks)
    n_linear = sum(isinstance(m, torch.nn.Linear) for m in gen.modules())
    assert n_linear == (6 if hidden else 3)


@pytest.mark.parametrize("size", [32, 84])
def test_feature_extractor_shape(size):
    assert FeatureExtractor(image_size=size, latent_dim=20)(torch.randn(2, 3, size, size)).shape == (2, 20)


def _trunk_equals(fe, reference) -> bool:
    ours = fe.trunk.state_dict()
    return all(torch.equal(ours[k], v) for k, v in reference.state_dict().items() if not k.startswith("fc."))


@pytest.mark.parametrize("layout", ["plain", "dataparallel", "nested", "nested_dataparallel"])
def test_resnet_extractor_loads_every_weight_of_common_checkpoint_layouts(tmp_path, layout):
    from torchvision.models import resnet18

    reference = resnet18(weights=None)
    state = reference.state_dict()
    if "dataparallel" in layout:
        state = {f"module.{k}": v for k, v in state.items()}
    if "nested" in layout:
        state = {"epoch": 90, "state_dict": state}
    torch.save(state, tmp_path / "r18.pth")
    fe = ResNetFeatureExtractor(latent_dim=16, weights_path=str(tmp_path / "r18.pth"))
    # every trunk tensor, BatchNorm statistics included, is the checkpoint's (a fresh
    # resnet18 draws other weights, so a skipped load cannot pass)
    assert _trunk_equals(fe, reference)
    fe.train()
    assert not fe.trunk.training and fe.head.training
    assert all(not p.requires_grad for p in fe.trunk.parameters())
    assert fe(torch.randn(2, 3, 32, 32)).shape == (2, 16)


@pytest.mark.parametrize("mangle,named", [
    (lambda s: {f"backbone.{k}": v for k, v in s.items()}, "unexpected keys: backbone."),
    (lambda s: {k: v for k, v in s.items() if not k.startswith("layer4.")}, "missing keys: layer4."),
    (lambda s: {"model": s}, "missing keys: bn1"),
])
def test_resnet_weights_that_do_not_fit_are_refused_naming_the_keys(tmp_path, mangle, named):
    from torchvision.models import resnet18

    torch.save(mangle(resnet18(weights=None).state_dict()), tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="not a torchvision ResNet-18 checkpoint") as info:
        ResNetFeatureExtractor(latent_dim=16, weights_path=str(tmp_path / "bad.pth"))
    assert named in str(info.value)
