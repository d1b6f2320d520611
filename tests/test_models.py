"""Model zoo against the reference facts of the older repos (CPU only).

``tests/fixtures/model_reference.json`` holds, for each of the 40 reference names, every
state_dict key and shape, the parameter count, the is_feat feature shapes, the input size and
the class count (trimmed copy of the project's reference file).
"""
import ast
import io
import json
import pathlib

import pytest
import torch
import torchvision
from torch import nn

import models
from models import build_model, feature_shapes, model_dict, resolve_model_name

ROOT = pathlib.Path(__file__).resolve().parents[1]
REF = json.loads((ROOT / 'tests' / 'fixtures' / 'model_reference.json').read_text())
NAMES = sorted(REF)


pytestmark = pytest.mark.usefixtures('few_threads')  # conftest: at most 2 torch threads


def _random_state_dict(shapes: dict) -> dict:
    """A checkpoint-like state_dict in the reference layout, with random values."""
    gen = torch.Generator().manual_seed(0)
    out = {}
    for key, shape in shapes.items():
        if key.endswith('num_batches_tracked'):
            out[key] = torch.tensor(int(torch.randint(1, 10**6, (), generator=gen)))
        elif key.endswith('running_var'):
            out[key] = torch.rand(shape, generator=gen) + 0.5
        else:
            out[key] = torch.randn(shape, generator=gen)
    return out


def test_model_dict_holds_every_reference_name():
    assert set(REF) <= set(model_dict)
    assert set(model_dict) - set(REF) == {'ShuffleV2_Imagenet'}
    assert len(REF) == 40


@pytest.mark.parametrize('name', NAMES)
def test_model_matches_reference(name):
    ref = REF[name]
    model = model_dict[name](num_classes=ref['num_classes'])

    # state_dict keys and shapes, parameter count
    got = {k: list(v.shape) for k, v in model.state_dict().items()}
    missing, extra = sorted(set(ref['state_dict']) - set(got)), sorted(set(got) - set(ref['state_dict']))
    assert not missing and not extra, f'{name}: missing {missing[:5]}, unexpected {extra[:5]}'
    wrong = {k: (got[k], s) for k, s in ref['state_dict'].items() if got[k] != s}
    assert not wrong, f'{name}: shape mismatches (got, ref) {dict(list(wrong.items())[:5])}'
    assert sum(p.numel() for p in model.parameters()) == ref['params']

    # is_feat at the reference input size: shapes, logits, classifier on the pooled vector
    model.eval()
    batch = 1 if name in models.IMAGENET_MODELS else 2
    x = torch.randn(batch, *ref['input'])
    with torch.no_grad():
        feats, logits = model(x, is_feat=True)
        assert [list(f.shape[1:]) for f in feats] == ref['is_feat_shapes']
        assert all(f.shape[0] == batch for f in feats)
        assert tuple(logits.shape) == (batch, ref['num_classes'])
        head = model.get_classifier()
        assert isinstance(head, nn.Linear) and head.out_features == ref['num_classes']
        torch.testing.assert_close(head(feats[-1]), logits, rtol=0, atol=0)
        if name not in models.IMAGENET_MODELS:  # plain forward == is_feat forward
            torch.testing.assert_close(model(x), logits, rtol=0, atol=0)

    # an older-repo checkpoint {'model': state_dict} in the reference layout loads strictly
    ckpt = {'model': _random_state_dict(ref['state_dict']), 'epoch': 240}
    model.load_state_dict(ckpt['model'], strict=True)
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt['model'][key].to(value.dtype)), key


def test_checkpoint_file_round_trip_loads_strictly():
    ref = REF['resnet8x4']
    buf = io.BytesIO()
    torch.save({'model': _random_state_dict(ref['state_dict']), 'epoch': 240}, buf)
    buf.seek(0)
    ckpt = torch.load(buf, map_location='cpu', weights_only=True)
    model = build_model('resnet8x4', num_classes=100)
    model.load_state_dict(ckpt['model'], strict=True)
    assert torch.equal(model.fc.bias, ckpt['model']['fc.bias'])


def test_shufflev2_imagenet_has_torchvision_layout():
    ours = model_dict['ShuffleV2_Imagenet'](num_classes=1000).eval()
    tv = torchvision.models.shufflenet_v2_x1_0(num_classes=1000).eval()
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in tv.state_dict().items()}
    tv.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        feats, logits = ours(x, is_feat=True)
        torch.testing.assert_close(logits, tv(x))
    assert [tuple(f.shape[1:]) for f in feats] == [(24, 56, 56), (116, 28, 28), (232, 14, 14), (464, 7, 7), (1024,)]


@pytest.mark.parametrize('name,tv_fn', [('ResNet18', 'resnet18'), ('MobileNetV2_Imagenet', 'mobilenet_v2')])
def test_imagenet_forward_equals_torchvision(name, tv_fn):
    ours = model_dict[name](num_classes=10).eval()
    tv = getattr(torchvision.models, tv_fn)(num_classes=10).eval()
    tv.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), tv(x))


# --- preact -------------------------------------------------------------------------------------

PREACT = ['resnet8x4', 'resnet20', 'ResNet50', 'wrn_16_2', 'wrn_16_1', 'vgg13', 'ShuffleV1', 'ShuffleV2']


@pytest.mark.parametrize('name', PREACT)
def test_preact_features_are_the_pre_relu_stage_outputs(name):
    model = model_dict[name](num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        post, logits = model(x, is_feat=True)
        pre, logits_pre = model(x, is_feat=True, preact=True)
    assert torch.equal(logits, logits_pre)
    assert [list(f.shape[1:]) for f in pre] == [list(f.shape[1:]) for f in post] == REF[name]['is_feat_shapes']
    assert torch.equal(pre[0], post[0]) and torch.equal(pre[-1], post[-1])  # stem and pooled
    for p, q in zip(pre[1:-1], post[1:-1]):
        torch.testing.assert_close(torch.relu(p), q, rtol=0, atol=0)
        assert (p < 0).any()  # really before the ReLU


def test_wrn_features_are_post_activation_and_pool_to_the_classifier_input():
    model = model_dict['wrn_40_1'](num_classes=10).eval()
    with torch.no_grad():
        feats, _ = model(torch.randn(2, 3, 32, 32), is_feat=True)
    assert len(feats) == 5  # stem, three stages, pooled vector
    assert all((f >= 0).all() for f in feats)
    torch.testing.assert_close(feats[-2].mean((2, 3)), feats[-1])


def test_mobilenetv2_preact_is_the_same_features():
    model = model_dict['MobileNetV2'](num_classes=10).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, _ = model(x, is_feat=True)
        b, _ = model(x, is_feat=True, preact=True)
    assert len(a) == len(b) == 6  # stem, four stages, pooled vector
    assert all(torch.equal(p, q) for p, q in zip(a, b))


def test_imagenet_models_refuse_preact_in_one_line():
    model = model_dict['ResNet18'](num_classes=10)
    with pytest.raises(NotImplementedError) as err:
        model(torch.randn(1, 3, 64, 64), is_feat=True, preact=True)
    assert '\n' not in str(err.value)


# --- feature_shapes -----------------------------------------------------------------------------

def test_feature_shapes_restores_modes_and_keeps_bn_statistics():
    model = build_model('resnet8x4', num_classes=100)
    model.train()
    model.layer2.eval()  # mixed modes must come back exactly
    before = {k: v.clone() for k, v in model.state_dict().items()}
    shapes = feature_shapes(model, (3, 32, 32))
    assert shapes == [tuple(s) for s in REF['resnet8x4']['is_feat_shapes']]
    assert feature_shapes(model, (1, 3, 32, 32)) == shapes
    assert model.training and not model.layer2.training and model.layer1.training
    assert not any(m.training for m in model.layer2.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    feature_shapes(model, (3, 32, 32))
    assert not model.training


# --- names, the ResNet50 clash, errors --------------------------------------------------------

def test_resolve_resnet50_clash():
    assert resolve_model_name('ResNet50', None) == 'ResNet50'
    assert resolve_model_name('ResNet50', 'cifar100') == 'ResNet50'
    assert resolve_model_name('ResNet50', 'tinyimagenet') == 'ResNet50'
    for ds in ('imagenet', 'ImageNet', 'imagenet-1k', 'imagenet100'):
        assert resolve_model_name('ResNet50', ds) == 'ResNet50@imagenet'
    assert resolve_model_name('ResNet50@imagenet', 'cifar100') == 'ResNet50@imagenet'
    assert resolve_model_name('resnet32x4', 'imagenet') == 'resnet32x4'
    cifar = build_model('ResNet50', num_classes=10)
    imnet = build_model('ResNet50', num_classes=10, dataset='imagenet')
    assert cifar.conv1.kernel_size == (3, 3) and not hasattr(cifar, 'maxpool')
    assert imnet.conv1.kernel_size == (7, 7) and imnet.get_classifier().out_features == 10


@pytest.mark.parametrize('call', [lambda: build_model('resnet33', 10), lambda: resolve_model_name('Foo', 'cifar100'),
                                  lambda: build_model('resnet50', 10, dataset='imagenet')])
def test_unknown_name_is_one_line_listing_valid_names(call):
    with pytest.raises(ValueError) as err:
        call()
    msg = str(err.value)
    assert '\n' not in msg
    assert all(name in msg for name in model_dict)


def test_every_constructor_takes_num_classes_keyword():
    for name, fn in model_dict.items():
        if name in models.IMAGENET_MODELS:
            continue  # built in test_model_matches_reference; too big to build twice
        assert fn(num_classes=7).get_classifier().out_features == 7, name


def test_models_package_imports_nothing_else_from_the_project():
    project = {p.name for p in ROOT.iterdir() if (p / '__init__.py').exists() or p.suffix == '.py'}
    project |= {p.stem for p in ROOT.glob('*.py')}
    project.discard('models')
    for path in (ROOT / 'models').rglob('*.py'):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                tops = [a.name.split('.')[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                tops = [node.module.split('.')[0]]
            else:
                continue
            assert not set(tops) & project, f'{path.name} imports {tops}'
