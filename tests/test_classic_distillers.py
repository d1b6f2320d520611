"""Classic feature distillers: golden values against independent float64 numpy formulas,
short batches, gradient routing, SimKD reuse, CRD data-set checks.

Golden tests feed fixed random float64 features straight into the distiller (its own modules
converted to float64) and recompute the published formula in numpy with explicit operations.
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import distill_context, student_options
from distiller_zoo.base import Batch, ModelOutputs
from distiller_zoo.attention import AttentionDistiller
from distiller_zoo.crd import CRDDistiller
from distiller_zoo.fitnet import HintDistiller
from distiller_zoo.semckd import SemCKDDistiller
from distiller_zoo.similarity import SimilarityDistiller
from distiller_zoo.simkd import SimKDDistiller, load_simkd_inference, simkd_inference_state
from distiller_zoo.srrl import SRRLDistiller
from distiller_zoo.vid import VIDDistiller

torch.set_num_threads(1)

NUM_CLASSES = 5
INPUT = (3, 8, 8)
N_DATA = 20


# ----------------------------------------------------------------------------- generic tiny models
class TinyNet(nn.Module):
    """forward(x, is_feat, preact) -> (feats, logits); feats = [stem, s1, s2, s3, pooled]."""

    def __init__(self, widths, strides, num_classes=NUM_CLASSES):
        super().__init__()
        c0, c1, c2, c3 = widths
        self.stem = nn.Conv2d(3, c0, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(c0)
        self.s1 = nn.Conv2d(c0, c1, 3, stride=strides[0], padding=1)
        self.s2 = nn.Conv2d(c1, c2, 3, stride=strides[1], padding=1)
        self.s3 = nn.Conv2d(c2, c3, 3, stride=strides[2], padding=1)
        self.fc = nn.Linear(c3, num_classes)

    def forward(self, x, is_feat=False, preact=False):
        f0 = F.relu(self.bn(self.stem(x)))
        f1 = F.relu(self.s1(f0))
        f2 = F.relu(self.s2(f1))
        f3 = F.relu(self.s3(f2))
        pooled = f3.mean((2, 3))
        logits = self.fc(pooled)
        return ([f0, f1, f2, f3, pooled], logits) if is_feat else logits

    def get_classifier(self):
        return self.fc


def make_student():
    # maps: (4,8,8) (4,8,8) (6,4,4) (8,2,2), pooled 8
    return TinyNet((4, 4, 6, 8), (1, 2, 2))


def make_teacher():
    # maps: (5,8,8) (6,8,8) (8,4,4) (10,4,4), pooled 10
    return TinyNet((5, 6, 8, 10), (1, 2, 1))


def make_opt(**kw):
    base = dict(hint_layer=2, feat_dim=4, mode="exact", nce_k=5, nce_t=0.07, nce_m=0.5,
                factor=2, soft=1.0, batch_size=8)
    base.update(kw)
    return student_options(**base)


def make_ctx(student=None, teacher=None, opt=None, contrastive_dataset=None, n_data=N_DATA):
    torch.manual_seed(0)
    student = student or make_student()
    teacher = teacher or make_teacher()
    teacher.eval()
    ctx = distill_context(student, teacher, opt or make_opt(), input_shape=INPUT, num_classes=NUM_CLASSES,
                          num_train_samples=n_data, names=("tiny_s", "tiny_t"))
    if contrastive_dataset is not None:
        ctx.contrastive_dataset = contrastive_dataset
    return ctx


def rand(*shape, seed, positive=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=g, dtype=torch.float64)
    return x.abs() if positive else x


S_SHAPES = [(4, 8, 8), (4, 8, 8), (6, 4, 4), (8, 2, 2), (8,)]
T_SHAPES = [(5, 8, 8), (6, 8, 8), (8, 4, 4), (10, 4, 4), (10,)]


def rand_feats(shapes, b, seed):
    return [rand(b, *s, seed=seed + i, positive=True) for i, s in enumerate(shapes)]


def outputs(b, seed=0, teacher_logits=None):
    fs = [f.requires_grad_() for f in rand_feats(S_SHAPES, b, seed)]
    ft = rand_feats(T_SHAPES, b, seed + 100)
    zt = teacher_logits if teacher_logits is not None else rand(b, NUM_CLASSES, seed=seed + 200)
    return (ModelOutputs(logits=rand(b, NUM_CLASSES, seed=seed + 300), feats=fs),
            ModelOutputs(logits=zt, feats=ft))


def randomize_(module, seed):
    """Deterministic non-trivial values for every parameter (BN affine included)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(0.5 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def n(t):
    return t.detach().cpu().numpy().astype(np.float64)


def total(terms):
    return sum(terms.values())


# ----------------------------------------------------------------------------- numpy references
def np_pool(x, h, w):
    N, C, H, W = x.shape
    assert H % h == 0 and W % w == 0
    return x.reshape(N, C, h, H // h, w, W // w).mean(axis=(3, 5))


def np_align(a, b):
    h, w = min(a.shape[2], b.shape[2]), min(a.shape[3], b.shape[3])
    return np_pool(a, h, w), np_pool(b, h, w)


def np_conv(x, w, bias=None, stride=1, pad=0):
    """Direct convolution: sum over kernel offsets of channel mixing."""
    N, C, H, W = x.shape
    O, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    Ho = (H + 2 * pad - kh) // stride + 1
    Wo = (W + 2 * pad - kw) // stride + 1
    out = np.zeros((N, O, Ho, Wo))
    for dy in range(kh):
        for dx in range(kw):
            patch = xp[:, :, dy:dy + stride * Ho:stride, dx:dx + stride * Wo:stride]
            out += np.einsum("nchw,oc->nohw", patch, w[:, :, dy, dx])
    if bias is not None:
        out += bias.reshape(1, -1, 1, 1)
    return out


def np_bn_train(x, gamma, beta, eps=1e-5):
    mean = x.mean(axis=(0, 2, 3), keepdims=True)
    var = ((x - mean) ** 2).mean(axis=(0, 2, 3), keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma.reshape(1, -1, 1, 1) + beta.reshape(1, -1, 1, 1)


def relu(x):
    return np.maximum(x, 0.0)


def l2n(x):
    return x / np.sqrt((x ** 2).sum(axis=1, keepdims=True))


def softplus(x):
    return np.log1p(np.exp(x))


# ----------------------------------------------------------------------------- golden values
def test_hint_golden():
    d = HintDistiller(make_ctx()).double().train()
    randomize_(d, 1)
    so, to = outputs(4)
    got = d(so, to, Batch(so.feats[0], None))["hint"].item()
    conv, bn = d.regressor.conv, d.regressor.bn
    assert conv.kernel_size == (1, 1)  # (6,4,4) -> (8,4,4): kernel 1 + H_s - H_t
    x = np_conv(n(so.feats[2]), n(conv.weight), n(conv.bias))
    y = relu(np_bn_train(x, n(bn.weight), n(bn.bias)))
    want = ((y - n(to.feats[2])) ** 2).mean()
    assert got == pytest.approx(want, rel=1e-10)


def test_hint_regressor_branches():
    from distiller_zoo.fitnet import ConvReg
    assert isinstance(ConvReg((4, 8, 8), (6, 4, 4)).conv, nn.Conv2d)          # stride-2 3x3
    assert ConvReg((4, 8, 8), (6, 4, 4)).conv.stride == (2, 2)
    assert isinstance(ConvReg((4, 4, 4), (6, 8, 8)).conv, nn.ConvTranspose2d)
    r = ConvReg((4, 2, 2), (6, 8, 8))                                        # pool teacher
    assert r.pool_teacher_to == (2, 2)
    assert r(torch.randn(3, 4, 2, 2)).shape == r.target(torch.randn(3, 6, 8, 8)).shape


def test_attention_golden():
    d = AttentionDistiller(make_ctx()).double()
    so, to = outputs(4)
    terms = d(so, to, Batch(None, None))
    assert list(terms) == ["at1", "at2", "at3"]
    want = []
    for fs, ft in zip(so.feats[1:-1], to.feats[1:-1]):
        a, b = np_align(n(fs), n(ft))
        am = l2n((a ** 2).mean(axis=1).reshape(a.shape[0], -1))
        bm = l2n((b ** 2).mean(axis=1).reshape(b.shape[0], -1))
        want.append(((am - bm) ** 2).mean())
    assert [t.item() for t in terms.values()] == pytest.approx(want, rel=1e-10)


def test_similarity_golden():
    d = SimilarityDistiller(make_ctx()).double()
    so, to = outputs(5)
    got = d(so, to, Batch(None, None))["sp"].item()
    b = 5
    fs = n(so.feats[-2]).reshape(b, -1)
    ft = n(to.feats[-2]).reshape(b, -1)
    gs, gt = l2n(fs @ fs.T), l2n(ft @ ft.T)
    want = ((gt - gs) ** 2).sum() / (b * b)
    assert got == pytest.approx(want, rel=1e-10)


def test_vid_golden():
    d = VIDDistiller(make_ctx()).double()
    for reg in d.regressors:  # published initialisation: predicted variance 5
        assert np.allclose(softplus(n(reg.log_scale)) + 1e-5, 5.0)
    randomize_(d, 2)
    so, to = outputs(4)
    terms = d(so, to, Batch(None, None))
    want = []
    for reg, fs, ft in zip(d.regressors, so.feats[1:-1], to.feats[1:-1]):
        a, t = np_align(n(fs), n(ft))
        w1, w2, w3 = (n(reg.regressor[i].weight) for i in (0, 2, 4))
        mu = np_conv(relu(np_conv(relu(np_conv(a, w1)), w2)), w3)
        var = (softplus(n(reg.log_scale)) + 1e-5).reshape(1, -1, 1, 1)
        want.append((0.5 * ((mu - t) ** 2 / var + np.log(var))).mean())
    assert [v.item() for v in terms.values()] == pytest.approx(want, rel=1e-10)


def test_crd_golden_and_memory_update():
    ctx = make_ctx(opt=make_opt(nce_k=5, feat_dim=4, nce_t=0.07, nce_m=0.5))
    d = CRDDistiller(ctx).double().train()
    randomize_(d, 3)
    mem = d.criterion.contrast
    mem_s0, mem_t0 = n(mem.memory_s).copy(), n(mem.memory_t).copy()
    b, T, m, N = 4, 0.07, 0.5, N_DATA
    so, to = outputs(b)
    idx = torch.tensor([3, 7, 11, 19])
    g = torch.Generator().manual_seed(9)
    cidx = torch.cat([idx.view(-1, 1), torch.randint(0, N, (b, 5), generator=g)], 1)
    got = d(so, to, Batch(None, None, extra=(idx, cidx)))["crd"].item()

    es, et = d.criterion.embed_s.linear, d.criterion.embed_t.linear
    vs = l2n(n(so.feats[-1]) @ n(es.weight).T + n(es.bias))
    vt = l2n(n(to.feats[-1]) @ n(et.weight).T + n(et.bias))
    ci = cidx.numpy()
    out_s = np.zeros((b, 6))
    out_t = np.zeros((b, 6))
    for i in range(b):
        for j in range(6):
            out_s[i, j] = math.exp(mem_t0[ci[i, j]] @ vs[i] / T)  # student anchor, teacher memory
            out_t[i, j] = math.exp(mem_s0[ci[i, j]] @ vt[i] / T)
    z_s, z_t = out_s.mean() * N, out_t.mean() * N

    def nce(P):
        k, pn, eps = P.shape[1] - 1, 1.0 / N, 1e-7
        s = 0.0
        for i in range(P.shape[0]):
            s += math.log(P[i, 0] / (P[i, 0] + k * pn + eps))
            for j in range(1, k + 1):
                s += math.log(k * pn / (P[i, j] + k * pn + eps))
        return -s / P.shape[0]

    want = nce(out_s / z_s) + nce(out_t / z_t)
    assert got == pytest.approx(want, rel=1e-9)
    assert mem.z_s.item() == pytest.approx(z_s, rel=1e-9)
    assert mem.z_t.item() == pytest.approx(z_t, rel=1e-9)
    # momentum update of the positives' rows, then re-normalisation; other rows untouched
    exp_s = l2n(m * mem_s0[idx.numpy()] + (1 - m) * vs)
    exp_t = l2n(m * mem_t0[idx.numpy()] + (1 - m) * vt)
    assert np.allclose(n(mem.memory_s)[idx.numpy()], exp_s, atol=1e-12)
    assert np.allclose(n(mem.memory_t)[idx.numpy()], exp_t, atol=1e-12)
    others = np.setdiff1d(np.arange(N), idx.numpy())
    assert np.array_equal(n(mem.memory_s)[others], mem_s0[others])
    # Z is fixed after the first batch; eval mode does not update the memory
    d.eval()
    before = n(mem.memory_s).copy()
    d(so, to, Batch(None, None, extra=(idx, cidx)))
    assert mem.z_s.item() == pytest.approx(z_s, rel=1e-9)
    assert np.array_equal(n(mem.memory_s), before)


def _np_mlp(x, mlp):
    h = relu(x @ n(mlp.linear1.weight).T + n(mlp.linear1.bias))
    return l2n(h @ n(mlp.linear2.weight).T + n(mlp.linear2.bias))


def _np_proj(x, proj):
    r = proj.regressor
    y = relu(np_bn_train(np_conv(x, n(r[0].weight)), n(r[1].weight), n(r[1].bias)))
    y = relu(np_bn_train(np_conv(y, n(r[3].weight), pad=1), n(r[4].weight), n(r[4].bias)))
    return np_conv(y, n(r[6].weight))


@pytest.mark.parametrize("b", [8, 3])
def test_semckd_golden_full_and_short_batch(b):
    B, soft = 8, 0.7
    d = SemCKDDistiller(make_ctx(opt=make_opt(batch_size=B, soft=soft))).double().train()
    randomize_(d, 4)
    so, to = outputs(b)
    got = d(so, to, Batch(None, None))["semckd"].item()

    gs, gt = [n(f) for f in so.feats[1:-1]], [n(f) for f in to.feats[1:-1]]

    def gram_padded(f):
        flat = f.reshape(b, -1)
        gmat = np.zeros((b, B))
        gmat[:, :b] = flat @ flat.T  # missing samples of a short batch contribute zeros
        return gmat

    q = [_np_mlp(gram_padded(f), mlp) for f, mlp in zip(gs, d.query)]
    k = [_np_mlp(gram_padded(f), mlp) for f, mlp in zip(gt, d.key)]
    # per-sample, per-pair MSE (BN statistics are over the whole batch: project all samples)
    ind = np.zeros((b, len(gs), len(gt)))
    for i in range(len(gs)):
        for j in range(len(gt)):
            src, tgt = np_align(gs[i], gt[j])
            pv = _np_proj(src, d.proj[i][j])
            for s in range(b):
                ind[s, i, j] = ((pv[s] - tgt[s]) ** 2).mean()
    loss = 0.0
    for s in range(b):
        for i in range(len(gs)):
            energy = np.array([q[i][s] @ k[j][s] for j in range(len(gt))]) / soft
            att = np.exp(energy - energy.max())
            att /= att.sum()
            for j in range(len(gt)):
                loss += att[j] * ind[s, i, j]
    want = loss / (b * len(gs))
    assert got == pytest.approx(want, rel=1e-9)


def test_semckd_rejects_batch_larger_than_configured():
    d = SemCKDDistiller(make_ctx(opt=make_opt(batch_size=4)))
    so, to = outputs(5)
    so = ModelOutputs(so.logits.float(), [f.detach().float() for f in so.feats])
    to = ModelOutputs(to.logits.float(), [f.float() for f in to.feats])
    with pytest.raises(ValueError, match="batch_size"):
        d(so, to, Batch(None, None))


def test_srrl_golden():
    ctx = make_ctx()
    ctx.teacher.double()
    d = SRRLDistiller(ctx).double().train()
    randomize_(d, 5)
    randomize_(ctx.teacher.fc, 6)
    so, to = outputs(4)
    terms = d(so, to, Batch(None, None))
    conv, bn, fc = d.connector.conv, d.connector.bn, ctx.teacher.fc
    h = n(so.feats[-1]) @ n(conv.weight)[:, :, 0, 0].T
    mu, var = h.mean(0), h.var(0)
    h = relu((h - mu) / np.sqrt(var + 1e-5) * n(bn.weight) + n(bn.bias))
    pred = h @ n(fc.weight).T + n(fc.bias)
    assert terms["srrl_feat"].item() == pytest.approx(((h - n(to.feats[-1])) ** 2).mean(), rel=1e-10)
    assert terms["srrl_logit"].item() == pytest.approx(((pred - n(to.logits)) ** 2).mean(), rel=1e-10)


def _np_simkd(x, proj):
    t = proj.transfer
    y = relu(np_bn_train(np_conv(x, n(t[0].weight)), n(t[1].weight), n(t[1].bias)))
    y = relu(np_bn_train(np_conv(y, n(t[3].weight), pad=1), n(t[4].weight), n(t[4].bias)))
    return relu(np_bn_train(np_conv(y, n(t[6].weight)), n(t[7].weight), n(t[7].bias)))


def test_simkd_golden_and_single_projection():
    ctx = make_ctx(opt=make_opt(factor=2))
    ctx.teacher.double()
    d = SimKDDistiller(ctx).double().train()
    randomize_(d, 7)
    randomize_(ctx.teacher.fc, 8)
    assert d.projector.transfer[0].out_channels == 10 // 2
    so, to = outputs(4)
    logits = d.student_logits(so)
    loss = d(so, to, Batch(None, None))["simkd"].item()
    # student (8,2,2) vs teacher (10,4,4): teacher map pooled to 2x2
    src, tgt = np_align(n(so.feats[-2]), n(to.feats[-2]))
    p = _np_simkd(src, d.projector)
    assert loss == pytest.approx(((p - tgt) ** 2).mean(), rel=1e-10)
    want_logits = p.mean(axis=(2, 3)) @ n(ctx.teacher.fc.weight).T + n(ctx.teacher.fc.bias)
    assert np.allclose(n(logits), want_logits, rtol=1e-10, atol=1e-12)
    # logits and loss share one projector pass: BN statistics updated once
    assert d.projector.transfer[1].num_batches_tracked.item() == 1


# ----------------------------------------------------------------------------- short batch + gradients
METHODS = {
    "hint": HintDistiller, "attention": AttentionDistiller, "similarity": SimilarityDistiller,
    "vid": VIDDistiller, "crd": CRDDistiller, "semckd": SemCKDDistiller, "srrl": SRRLDistiller,
    "simkd": SimKDDistiller,
}


def run_step(name, b, seed=0, device="cpu"):
    ctx = make_ctx()
    ctx.student.to(device)
    ctx.teacher.to(device)
    ctx.device = torch.device(device)
    student, teacher = ctx.student.train(), ctx.teacher
    bn_before = teacher.bn.running_mean.clone()
    d = METHODS[name](ctx).train()
    assert student.training and not teacher.training  # shape inference restored the modes
    assert torch.equal(teacher.bn.running_mean, bn_before)
    assert not any(p_ is q for p_ in d.parameters() for q in teacher.parameters())
    torch.manual_seed(seed)
    x = torch.randn(b, *INPUT, device=device)
    feats_s, logits_s = student(x, is_feat=True)
    with torch.no_grad():
        feats_t, logits_t = teacher(x, is_feat=True)
    so = ModelOutputs(logits_s, feats_s)
    to = ModelOutputs(logits_t, feats_t)
    extra = ()
    if name == "crd":  # indices left on the CPU on purpose: the memory bank moves them
        idx = torch.arange(b)
        extra = (idx, torch.cat([idx.view(-1, 1), torch.randint(0, N_DATA, (b, 5))], 1))
    batch = Batch(x, torch.zeros(b, dtype=torch.long, device=device), extra)
    logits = d.student_logits(so)
    terms = d(so, to, batch)
    loss = total(terms) + F.cross_entropy(logits, batch.targets)
    assert torch.isfinite(loss)
    loss.backward()
    return d, student, teacher, terms, logits


@pytest.mark.parametrize("name", list(METHODS))
def test_short_batch_and_gradients(name):
    d, student, teacher, terms, logits = run_step(name, b=3)
    assert logits.shape == (3, NUM_CLASSES)
    assert terms and all(t.dim() == 0 for t in terms.values())
    # gradients reach the student and every trainable module of the distiller, never the teacher
    assert student.stem.weight.grad is not None and student.stem.weight.grad.abs().sum() > 0
    for pname, p_ in d.named_parameters():
        assert p_.grad is not None, pname
        if pname.endswith("weight"):  # (a conv bias followed by BN has an exactly-zero gradient)
            assert p_.grad.abs().sum() > 0, pname
    for p_ in teacher.parameters():
        assert p_.grad is None


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("name", list(METHODS))
def test_cuda_step(name):
    d, student, teacher, terms, logits = run_step(name, b=3, device="cuda")
    assert all(t.device.type == "cuda" for t in terms.values())
    assert all(p.device.type == "cuda" for p in d.parameters())
    assert all(b_.device.type == "cuda" for b_ in d.buffers())


def test_terms_alone_reach_student_features():
    # the distillation terms alone (no CE) send gradient to the student's features
    for name in METHODS:
        ctx = make_ctx()
        d = METHODS[name](ctx).train()
        b = 3
        so, to = outputs(b)
        so = ModelOutputs(so.logits.float(), [f.detach().float().requires_grad_() for f in so.feats])
        to = ModelOutputs(to.logits.float(), [f.float() for f in to.feats])
        extra = ()
        if name == "crd":
            idx = torch.arange(b)
            extra = (idx, torch.cat([idx.view(-1, 1), torch.randint(0, N_DATA, (b, 5))], 1))
        total(d(so, to, Batch(None, None, extra))).backward()
        assert any(f.grad is not None and f.grad.abs().sum() > 0 for f in so.feats), name


def test_batch_of_one_does_not_crash():
    for name in METHODS:
        run_step(name, b=1)


# ----------------------------------------------------------------------------- SimKD reuse
def test_simkd_inference_state_roundtrip():
    ctx = make_ctx()
    d = SimKDDistiller(ctx)
    for _ in range(2):  # a couple of training steps so BN statistics are non-trivial
        run_x = torch.randn(4, *INPUT)
        fs, _ = ctx.student(run_x, is_feat=True)
        d.train()
        d.student_logits(ModelOutputs(None, fs))
    d.eval()
    ctx.student.eval()
    x = torch.randn(3, *INPUT)
    with torch.no_grad():
        want = d.predict(ctx.student, x)
    state = simkd_inference_state(d)
    buf = __import__("io").BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    state = torch.load(buf)
    deployed = load_simkd_inference(ctx.student, state).eval()
    with torch.no_grad():
        got = deployed(x)
    assert torch.allclose(got, want, atol=1e-6)
    # the teacher is never part of the distiller's state
    assert not any(k.startswith("_frozen") for k in d.state_dict())


# ----------------------------------------------------------------------------- CRD data set checks
class FakeDS(torch.utils.data.Dataset):
    def __init__(self, targets):
        self.targets = list(targets)

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return torch.zeros(INPUT), self.targets[i]


def test_crd_nce_k_too_large_is_one_line_error():
    ds = FakeDS([i % 4 for i in range(N_DATA)])  # 5 per class -> 15 negatives per sample
    with pytest.raises(ValueError) as e:
        CRDDistiller(make_ctx(opt=make_opt(nce_k=N_DATA)))  # at build time: at most n - 1
    assert f"--nce_k {N_DATA}" in str(e.value) and "\n" not in str(e.value)
    ok = lambda ds, k, mode: ds
    with pytest.raises(ValueError) as e:  # when wrapping, the labels are known
        CRDDistiller(make_ctx(opt=make_opt(nce_k=16), contrastive_dataset=ok)).wrap_train_dataset(ds)
    assert "--nce_k 16" in str(e.value) and "at most 15" in str(e.value) and "\n" not in str(e.value)
    CRDDistiller(make_ctx(opt=make_opt(nce_k=15), contrastive_dataset=ok)).wrap_train_dataset(ds)


def test_crd_wraps_with_context_wrapper():
    calls = []

    def wrapper(ds, k, mode):
        calls.append((ds, k, mode))
        return "wrapped"

    ds = FakeDS([i % 4 for i in range(N_DATA)])
    d = CRDDistiller(make_ctx(opt=make_opt(nce_k=5, mode="relax"), contrastive_dataset=wrapper))
    assert d.wrap_train_dataset(ds) == "wrapped"
    assert calls == [(ds, 5, "relax")]
    with pytest.raises(ValueError, match="memory bank"):
        d.wrap_train_dataset(FakeDS([0, 1] * 30))


def test_crd_rejects_malformed_contrast_indices():
    d = CRDDistiller(make_ctx())
    so, to = outputs(2)
    so = ModelOutputs(so.logits.float(), [f.detach().float() for f in so.feats])
    to = ModelOutputs(to.logits.float(), [f.float() for f in to.feats])
    idx = torch.arange(2)
    with pytest.raises(ValueError, match="nce_k"):
        d(so, to, Batch(None, None, (idx, torch.zeros(2, 5, dtype=torch.long))))


# ----------------------------------------------------------------------------- real model zoo (optional)
def _zoo():
    try:
        import models
    except ModuleNotFoundError:
        return None
    if not all(hasattr(models, a) for a in ("build_model", "feature_shapes")):
        return None
    return models


@pytest.mark.skipif(_zoo() is None, reason="models package not available yet")
@pytest.mark.parametrize("name", list(METHODS))
def test_real_models_short_batch(name):
    models = _zoo()
    student = models.build_model("resnet8", num_classes=10)
    teacher = models.build_model("resnet8x4", num_classes=10).eval()
    ctx = distill_context(student, teacher, make_opt(hint_layer=2), num_train_samples=N_DATA,
                          names=("resnet8", "resnet8x4"))
    d = METHODS[name](ctx).train()
    x = torch.randn(3, 3, 32, 32)
    fs, zs = student(x, is_feat=True)
    with torch.no_grad():
        ft, zt = teacher(x, is_feat=True)
    extra = ()
    if name == "crd":
        idx = torch.arange(3)
        extra = (idx, torch.cat([idx.view(-1, 1), torch.randint(0, N_DATA, (3, 5))], 1))
    so, to = ModelOutputs(zs, fs), ModelOutputs(zt, ft)
    loss = total(d(so, to, Batch(x, torch.zeros(3, dtype=torch.long), extra)))
    loss = loss + d.student_logits(so).sum()
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in teacher.parameters())
