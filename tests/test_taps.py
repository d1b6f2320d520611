"""Block-level layer names and ``models.taps.FeatureTap`` (CPU only)."""
import copy
import re

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import models
from models import model_dict
from models.taps import FeatureTap


pytestmark = pytest.mark.usefixtures('few_threads')  # conftest: at most 2 torch threads


def expected_block_count(name: str) -> int:
    """The documented rule (models/README.md): the stem, plus one per block / unit."""
    imagenet_blocks = {'ResNet10x2': [1, 1, 1, 1], 'ResNet18': [2] * 4, 'ResNet18x2': [2] * 4,
                       'ResNet34': [3, 4, 6, 3], 'ResNet34x2': [3, 4, 6, 3], 'ResNet50@imagenet': [3, 4, 6, 3],
                       'wrn_50_2': [3, 4, 6, 3], 'resnext50_32x4d': [3, 4, 6, 3], 'ResNet50': [3, 4, 6, 3]}
    if name in imagenet_blocks:                       # residual / bottleneck blocks
        return 1 + sum(imagenet_blocks[name])
    m = re.fullmatch(r'resnet(\d+)(x\d)?', name)      # CIFAR ResNet-d: (d-2)/6 blocks x 3 stages
    if m:
        return 1 + 3 * (int(m.group(1)) - 2) // 6
    m = re.fullmatch(r'wrn_(\d+)_\d+', name)          # WRN-d-k: (d-4)/6 blocks x 3 stages
    if m:
        return 1 + 3 * (int(m.group(1)) - 4) // 6
    convs = {'vgg8': 5, 'vgg11': 8, 'vgg13': 10, 'vgg16': 13, 'vgg19': 16}
    if name in convs:                                 # one per conv-BN-ReLU unit, stem included
        return convs[name]
    if name.startswith('MobileNetV2'):                # 17 inverted-residual blocks
        return 1 + 17
    if name.startswith('Shuffle'):                    # 4 + 8 + 4 units
        return 1 + 16
    raise KeyError(name)


def _input_for(name, batch=2, size=None):
    if size is None:
        size = 64 if name in models.IMAGENET_MODELS else 32
    return torch.randn(batch, 3, size, size)


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = torch.rand(n, generator=gen) + 0.5
            m.bias.data = torch.randn(n, generator=gen) * 0.2
            m.running_mean.data = torch.randn(n, generator=gen) * 0.2
            m.running_var.data = torch.rand(n, generator=gen) + 0.5


# --- block-level names ----------------------------------------------------------------------------

@pytest.mark.parametrize('name', sorted(model_dict))
def test_block_layer_names_follow_rule_and_order(name):
    model = model_dict[name](num_classes=10).eval()
    names = model.block_layer_names()
    assert len(names) == expected_block_count(name)
    assert len(set(names)) == len(names)
    for n in names:
        model.get_submodule(n)

    # hooks fire in names order, once each; every is_feat stage map is one of the taps' outputs
    order = []
    handles = [model.get_submodule(n).register_forward_hook(lambda *a, n=n: order.append(n)) for n in names]
    try:
        with FeatureTap(model, names) as tap, torch.no_grad():
            feats, _ = model(_input_for(name, batch=1), is_feat=True)
    finally:
        for h in handles:
            h.remove()
    assert order == names
    outs = tap.outputs
    assert len(outs) == len(names) and all(isinstance(o, torch.Tensor) for o in outs)
    assert torch.equal(outs[0], feats[0]) or name.startswith('vgg')  # stem = f0 (VGG: first unit)
    assert torch.equal(outs[-1], feats[-2])  # last block = last stage map
    pos = -1
    for k, f in enumerate(feats[:-1]):  # in order, each stage map is some tap's output
        hits = [i for i in range(pos + 1, len(outs)) if outs[i].shape == f.shape and torch.equal(outs[i], f)]
        assert hits, f'{name}: is_feat map {k} is not among the block-level taps'
        pos = hits[0]


def test_block_count_examples_from_the_issue():
    assert len(model_dict['resnet32x4'](num_classes=100).block_layer_names()) == 16
    assert len(model_dict['resnet8x4'](num_classes=100).block_layer_names()) == 4


# --- tap outputs equal hand-computed activations ---------------------------------------------------

def _tap(model, x):
    with FeatureTap(model, model.block_layer_names()) as tap, torch.no_grad():
        logits = model(x)
    return tap.outputs, logits


def test_resnet_taps_equal_manual_forward():
    model = model_dict['resnet8x4'](num_classes=10).eval()
    _randomize_bn(model)
    x = _input_for('resnet8x4')
    outs, _ = _tap(model, x)
    with torch.no_grad():
        h = F.relu(model.bn1(model.conv1(x)))
        expected = [h]
        for stage in (model.layer1, model.layer2, model.layer3):
            for b in stage:
                o = F.relu(b.bn1(b.conv1(h)))
                o = b.bn2(b.conv2(o))
                h = F.relu(o + (b.downsample(h) if b.downsample is not None else h))
                expected.append(h)
    assert len(outs) == len(expected)
    for o, e in zip(outs, expected):
        torch.testing.assert_close(o, e, rtol=0, atol=0)


@pytest.mark.parametrize('size', [32, 64])
def test_vgg_taps_equal_manual_forward(size):
    model = model_dict['vgg13'](num_classes=10).eval()
    _randomize_bn(model)
    x = _input_for('vgg13', size=size)
    outs, _ = _tap(model, x)
    expected = []
    with torch.no_grad():
        h = x
        for k in range(5):
            if 0 < k < 4 or (k == 4 and size == 64):  # the older repos' rule: block4 unpooled at 32x32
                h = F.max_pool2d(h, 2, 2)
            block = getattr(model, f'block{k}')
            for j in range(len(model.cfg[k])):
                h = F.relu(block[3 * j + 1](block[3 * j](h)))
                expected.append(h)
    assert len(outs) == len(expected) == 10
    for o, e in zip(outs, expected):
        torch.testing.assert_close(o, e, rtol=0, atol=0)


def test_mobilenetv2_taps_equal_manual_forward():
    model = model_dict['MobileNetV2'](num_classes=10).eval()
    _randomize_bn(model)
    x = _input_for('MobileNetV2')
    outs, _ = _tap(model, x)
    expected = []
    with torch.no_grad():
        h = F.relu(model.conv1[1](model.conv1[0](x)))
        expected.append(h)
        for stage in model.blocks:
            for b in stage:
                c = b.conv
                o = F.relu(c[1](c[0](h)))
                o = F.relu(c[4](c[3](o)))
                o = c[7](c[6](o))
                h = h + o if b.use_res_connect else o
                expected.append(h)
    assert len(outs) == len(expected) == 18
    for o, e in zip(outs, expected):
        torch.testing.assert_close(o, e, rtol=0, atol=0)


def test_wrn_taps_are_post_activation_of_stem_and_blocks():
    model = model_dict['wrn_16_2'](num_classes=10).eval()
    _randomize_bn(model)
    x = _input_for('wrn_16_2')
    outs, _ = _tap(model, x)
    blocks = [b for s in (model.block1, model.block2, model.block3) for b in s.layer]
    expected = []  # each block input activated by that block's BN-ReLU, the last by the model's
    with torch.no_grad():
        h = model.conv1(x)
        for b in blocks:
            a = F.relu(b.bn1(h))
            expected.append(a)
            o = F.relu(b.bn2(b.conv1(a)))
            h = (h if b.equal_in_out else b.convShortcut(a)) + b.conv2(o)
        expected.append(F.relu(model.bn1(h)))
    assert len(outs) == len(expected) == 7
    for o, e in zip(outs, expected):
        torch.testing.assert_close(o, e, rtol=0, atol=0)


def test_imagenet_resnet_taps_equal_manual_forward():
    model = model_dict['ResNet18'](num_classes=10).eval()
    _randomize_bn(model)
    x = _input_for('ResNet18')
    outs, _ = _tap(model, x)
    with torch.no_grad():
        h = F.max_pool2d(F.relu(model.bn1(model.conv1(x))), 3, 2, 1)
        expected = [h]
        for s in (1, 2, 3, 4):
            for b in getattr(model, f'layer{s}'):
                o = F.relu(b.bn1(b.conv1(h)))
                o = b.bn2(b.conv2(o))
                h = F.relu(o + (b.downsample(h) if b.downsample is not None else h))
                expected.append(h)
    assert len(outs) == len(expected) == 9
    for o, e in zip(outs, expected):
        torch.testing.assert_close(o, e, rtol=0, atol=0)


# --- taps change nothing, keep gradients ----------------------------------------------------------

INVARIANCE = ['resnet8x4', 'wrn_16_2', 'vgg8', 'MobileNetV2', 'ShuffleV1', 'ShuffleV2', 'ResNet18',
              'MobileNetV2_Imagenet', 'ShuffleV2_Imagenet']


@pytest.mark.parametrize('name', INVARIANCE)
def test_taps_change_no_output_parameter_or_bn_statistic_in_train_mode(name):
    torch.manual_seed(0)
    plain = model_dict[name](num_classes=10).train()
    tapped = copy.deepcopy(plain)
    x = _input_for(name, batch=4)

    torch.manual_seed(1)
    feats_a, logits_a = plain(x, is_feat=True)
    logits_a.sum().backward()
    with FeatureTap(tapped, tapped.block_layer_names()) as tap:
        torch.manual_seed(1)
        feats_b, logits_b = tapped(x, is_feat=True)
        logits_b.sum().backward()
    assert torch.equal(logits_a, logits_b)
    assert len(feats_a) == len(feats_b)
    assert all(torch.equal(a, b) for a, b in zip(feats_a, feats_b))
    sd_a, sd_b = plain.state_dict(), tapped.state_dict()
    assert list(sd_a) == list(sd_b)
    for key in sd_a:  # BN running stats and num_batches_tracked moved identically
        assert torch.equal(sd_a[key], sd_b[key]), key
    params_a, params_b = dict(plain.named_parameters()), dict(tapped.named_parameters())
    assert list(params_a) == list(params_b)
    for key, pa in params_a.items():
        assert torch.equal(pa.grad, params_b[key].grad), key
    assert len(tap.outputs) == len(tapped.block_layer_names())


def test_tap_outputs_keep_gradients():
    model = model_dict['resnet8x4'](num_classes=10).train()
    with FeatureTap(model, model.block_layer_names()) as tap:
        model(_input_for('resnet8x4'))
    assert len(tap.outputs) == 4  # stem + 3 blocks
    assert all(o.requires_grad and o.grad_fn is not None for o in tap.outputs)
    sum(o.pow(2).mean() for o in tap.outputs).backward()
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.abs().sum() > 0
    assert model.fc.weight.grad is None  # nothing tapped after the last block


# --- FeatureTap on any module ---------------------------------------------------------------------

def test_tap_on_plain_sequential():
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 3), nn.Tanh()))
    x = torch.randn(5, 4)
    with FeatureTap(seq, ['2.0', '1', '']) as tap:
        y = seq(x)
    h = F.relu(seq[0](x))
    a, b, c = tap.outputs
    torch.testing.assert_close(a, seq[2][0](h))
    torch.testing.assert_close(b, h)
    assert c is y
    assert list(tap.as_dict()) == ['2.0', '1', '']


def test_unknown_name_is_a_one_line_error():
    seq = nn.Sequential(nn.Linear(2, 2))
    with pytest.raises(ValueError) as err:
        FeatureTap(seq, ['0', 'layer9.3'])
    assert '\n' not in str(err.value) and 'layer9.3' in str(err.value)
    assert not seq[0]._forward_hooks  # nothing half-registered


def test_remove_clear_and_context_manager():
    model = model_dict['resnet8'](num_classes=10).eval()
    names = model.block_layer_names()
    tap = FeatureTap(model, names)
    assert sum(len(m._forward_hooks) for m in model.modules()) == len(names)
    with torch.no_grad():
        model(_input_for('resnet8'))
    first = tap.outputs
    tap.clear()
    with pytest.raises(RuntimeError):
        tap.outputs
    tap.remove()
    tap.remove()  # idempotent
    assert not tap.active
    assert all(not m._forward_hooks for m in model.modules())
    with torch.no_grad():
        model(_input_for('resnet8'))
    with pytest.raises(RuntimeError):
        tap.outputs  # nothing recorded after remove()
    with FeatureTap(model, names) as tap2, torch.no_grad():
        model(_input_for('resnet8'))
    assert all(not m._forward_hooks for m in model.modules())
    assert [o.shape for o in tap2.outputs] == [o.shape for o in first]  # readable after exit


def test_tuple_output_and_repeated_calls():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, 'aux'

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair = Pair()
            self.act = nn.ReLU()

        def forward(self, x):
            y, _ = self.pair(x)
            return self.act(self.act(y) - 1)  # act runs twice: the last output is kept

    net = Net()
    x = torch.randn(3, 4)
    with FeatureTap(net, ['pair', 'act']) as tap:
        out = net(x)
    torch.testing.assert_close(tap.outputs[0], x * 2)
    assert tap.outputs[1] is out


def _compiled_eager(model):
    """torch.compile's tracing (dynamo) without code generation: what decides which hooks run."""
    model.compile(backend='eager', dynamic=False)
    return model


def test_compiled_module_ignores_hooks_added_after_its_first_call():
    """The failure keep_tap exists for (seen on a GPU with --compile): a per-forward tap on a
    compiled module first called without hooks records nothing."""
    torch.manual_seed(0)
    model = _compiled_eager(models.build_model('resnet8', num_classes=10).eval())
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model(x)
        with FeatureTap(model, model.block_layer_names()) as tap:
            model(x)
            with pytest.raises(RuntimeError, match='nothing recorded'):
                tap.outputs


def test_kept_tap_records_every_forward_of_a_compiled_module_in_both_modes():
    torch.manual_seed(0)
    reference = models.build_model('resnet8', num_classes=10)
    model = copy.deepcopy(reference)
    names = model.block_layer_names()
    models.keep_tap(model, names)
    _compiled_eager(model)
    x = torch.randn(4, 3, 32, 32)
    for train in (False, True, False):
        reference.train(train), model.train(train)
        with torch.no_grad():
            model(x), reference(x)  # an untapped call in between, as validation does
        for _ in range(2):
            with models.open_tap(model, names) as tap:
                model(x)
                got = tap.outputs
            with FeatureTap(reference, names) as ref_tap:
                reference(x)
                want = ref_tap.outputs
            assert len(got) == len(want)
            for g, w in zip(got, want):
                torch.testing.assert_close(g, w)
        # the kept tap drops its references to the activations after the block
        with pytest.raises(RuntimeError, match='nothing recorded'):
            tap.outputs


def test_open_tap_without_kept_tap_removes_its_hooks_and_refuses_other_layers_of_a_kept_one():
    model = models.build_model('resnet8', num_classes=10)
    names = model.block_layer_names()
    with models.open_tap(model, names) as tap:
        model(torch.randn(2, 3, 32, 32))
        assert len(tap.outputs) == len(names)
    assert not tap.active
    models.keep_tap(model, names)
    assert models.keep_tap(model, names) is models.keep_tap(model, names)
    with pytest.raises(ValueError, match='other layers'):
        with models.open_tap(model, names[:2]):
            pass
