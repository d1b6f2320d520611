"""CKA math against an independent float64 numpy reference, numerics and gradients."""
import numpy as np
import pytest
import torch

from cka import CKAAccumulator, cka, cka_from_grams, cka_matrix, flatten_features, hsic_terms, normalized_grams

ESTIMATORS = [("linear", False), ("linear", True), ("rbf", False), ("rbf", True)]


# ---------------------------------------------------------------- independent numpy reference
def ref_linear_kernel(x):
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    return x @ x.T


def ref_sq_dists(x):
    x = np.asarray(x, dtype=np.float64).reshape(len(x), -1)
    diff = x[:, None, :] - x[None, :, :]
    return (diff ** 2).sum(-1)


def ref_rbf_sigma2(x, t=0.5):
    d = ref_sq_dists(x)
    iu = np.triu_indices(len(d), 1)
    return t ** 2 * np.median(d[iu])


def ref_rbf_kernel(x, t=0.5, sigma2=None):
    d = ref_sq_dists(x)
    s2 = ref_rbf_sigma2(x, t) if sigma2 is None else sigma2
    return np.exp(-d / (2.0 * s2))


def ref_hsic_biased(K, L):
    n = K.shape[0]
    H = np.eye(n) - np.ones((n, n)) / n
    return np.trace(K @ H @ L @ H) / (n - 1) ** 2


def ref_hsic_unbiased(K, L):
    """Song et al. (2012), explicit formula with zeroed diagonals."""
    n = K.shape[0]
    Kt = K - np.diag(np.diag(K))
    Lt = L - np.diag(np.diag(L))
    one = np.ones(n)
    val = (np.trace(Kt @ Lt)
           + (one @ Kt @ one) * (one @ Lt @ one) / ((n - 1) * (n - 2))
           - 2.0 / (n - 2) * (one @ Kt @ Lt @ one))
    return val / (n * (n - 3))


def ref_kernel(x, kernel):
    return ref_linear_kernel(x) if kernel == "linear" else ref_rbf_kernel(x)


def ref_cka(K, L, debiased):
    h = ref_hsic_unbiased if debiased else ref_hsic_biased
    return h(K, L) / np.sqrt(h(K, K) * h(L, L))


def ref_matrix(xs, ys, kernel, debiased):
    Ks = [ref_kernel(x, kernel) for x in xs]
    Ls = [ref_kernel(y, kernel) for y in ys]
    return np.array([[ref_cka(K, L, debiased) for L in Ls] for K in Ks])


# ---------------------------------------------------------------- data
def _layers(n=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(n, 6, generator=g, dtype=torch.float64)
    def mix(*shape, noise):
        p = int(np.prod(shape))
        w = torch.randn(6, p, generator=g, dtype=torch.float64)
        return (base @ w + noise * torch.randn(n, p, generator=g, dtype=torch.float64)).reshape(n, *shape)
    xs = [mix(3, 4, 4, noise=0.5), mix(20, noise=2.0), mix(48, noise=1.0)]   # widths 48, 20, 48
    ys = [mix(10, noise=1.0), mix(2, 3, 5, noise=3.0)]
    return xs, ys


def _np(ts):
    return [t.detach().numpy() for t in ts]


# ---------------------------------------------------------------- reference agreement
@pytest.mark.parametrize("kernel,debiased", ESTIMATORS)
def test_matches_numpy_reference(kernel, debiased):
    xs, ys = _layers()
    ref = ref_matrix(_np(xs), _np(ys), kernel, debiased)
    got64 = cka_matrix(xs, ys, kernel, debiased, dtype=torch.float64).numpy()
    np.testing.assert_allclose(got64, ref, rtol=1e-10, atol=1e-12)
    got32 = cka_matrix([x.float() for x in xs], [y.float() for y in ys], kernel, debiased)
    assert got32.dtype == torch.float32 and got32.shape == (3, 2)
    np.testing.assert_allclose(got32.double().numpy(), ref, rtol=1e-5, atol=1e-6)
    # symmetric self matrix, unit diagonal
    self_m = cka_matrix(xs, None, kernel, debiased, dtype=torch.float64).numpy()
    np.testing.assert_allclose(self_m, ref_matrix(_np(xs), _np(xs), kernel, debiased), rtol=1e-10)
    np.testing.assert_allclose(np.diag(self_m), 1.0, rtol=1e-12)


@pytest.mark.parametrize("kernel,debiased", ESTIMATORS)
def test_normalized_grams_factorisation(kernel, debiased):
    """S @ T.T of the unit-norm flattened centred Grams is the CKA matrix of the numpy reference."""
    xs, ys = _layers()
    S = normalized_grams(xs, kernel, debiased)  # float64 inputs stay float64
    T = normalized_grams(ys, kernel, debiased)
    assert S.shape == (3, 24 * 24) and T.shape == (2, 24 * 24) and S.dtype == T.dtype == torch.float64
    torch.testing.assert_close(S.norm(dim=1), torch.ones(3, dtype=torch.float64))
    ref = ref_matrix(_np(xs), _np(ys), kernel, debiased)
    np.testing.assert_allclose(cka_from_grams(S, T).numpy(), ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(float(cka(xs[0], ys[1], kernel, debiased)), ref[0, 1],
                               rtol=1e-10)


# ---------------------------------------------------------------- properties
@pytest.mark.parametrize("kernel,debiased", ESTIMATORS)
def test_invariances_and_self_similarity(kernel, debiased):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(32, 40, generator=g, dtype=torch.float64)
    y = x[:, :30] @ torch.randn(30, 25, generator=g, dtype=torch.float64) \
        + torch.randn(32, 25, generator=g, dtype=torch.float64)
    q, _ = torch.linalg.qr(torch.randn(40, 40, generator=g, dtype=torch.float64))
    base = cka(x, y, kernel, debiased, dtype=torch.float64)
    for x2 in (x @ q, 3.7 * x, x @ q * 1e-3 + 5.0):
        torch.testing.assert_close(cka(x2, y, kernel, debiased, dtype=torch.float64), base,
                                   rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(cka(x, x, kernel, debiased, dtype=torch.float64),
                               torch.tensor(1.0, dtype=torch.float64))
    assert abs(float(cka(x.float(), x.float(), kernel, debiased)) - 1.0) < 1e-5


def test_bias_at_small_batch():
    g = torch.Generator().manual_seed(2)
    biased, debiased = [], []
    for _ in range(3):
        x = torch.randn(64, 512, generator=g)
        y = torch.randn(64, 512, generator=g)
        biased.append(float(cka(x, y)))
        debiased.append(float(cka(x, y, debiased=True)))
    assert min(biased) > 0.8
    assert abs(np.mean(debiased)) < 0.03 and max(abs(v) for v in debiased) < 0.06


# ---------------------------------------------------------------- numerics
@pytest.mark.parametrize("kernel,debiased", ESTIMATORS)
def test_constant_layer_finite_value_and_gradient(kernel, debiased):
    g = torch.Generator().manual_seed(3)
    const = torch.full((16, 4, 2, 2), 3.0, requires_grad=True)
    zero = torch.zeros(16, 16, requires_grad=True)           # same width: shares the batched Gram
    live = torch.randn(16, 16, generator=g, requires_grad=True)
    target = torch.randn(16, 8, generator=g)
    m = cka_matrix([const, zero, live], [target, target.clone().fill_(1.0)], kernel, debiased)
    loss = (1.0 - m).sum()
    loss.backward()
    assert torch.isfinite(m).all() and torch.isfinite(loss)
    assert m[0].abs().max() == 0 and m[1].abs().max() == 0 and m[:, 1].abs().max() == 0
    for t in (const, zero, live):
        assert torch.isfinite(t.grad).all()
    assert const.grad.abs().max() == 0 and zero.grad.abs().max() == 0
    assert live.grad.abs().max() > 0
    assert float(cka_matrix([const.detach()], None, kernel, debiased)[0, 0]) == 0.0


@pytest.mark.parametrize("kernel,debiased", ESTIMATORS)
def test_large_offset_float32_close_to_float64(kernel, debiased):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(64, 256, generator=g, dtype=torch.float64)
    y = x[:, :64] @ torch.randn(64, 32, generator=g, dtype=torch.float64) \
        + 2.0 * torch.randn(64, 32, generator=g, dtype=torch.float64)
    x32, y32 = (x + 1e4).float(), (y - 3e4).float()
    # float64 reference on the same float32 inputs, centred in float64 first (every estimator is
    # translation invariant; even float64 loses the unbiased HSIC of raw 1e4-offset Grams)
    xr, yr = x32.double().numpy(), y32.double().numpy()
    xr, yr = xr - xr.mean(0), yr - yr.mean(0)
    ref = ref_cka(ref_kernel(xr, kernel), ref_kernel(yr, kernel), debiased)
    got = float(cka(x32, y32, kernel, debiased))
    assert abs(got - ref) < 1e-6, (got, ref)


@pytest.mark.parametrize("kernel,debiased", ESTIMATORS)
def test_offsets_and_scales_per_layer_float32_close_to_float64(kernel, debiased):
    """Layers of one width group with different offsets and magnitudes (none, a moderate
    per-column offset, a large common offset, huge and tiny values, a layer constant over the
    batch) share one batched Gram; each keeps float32 precision of the float64 values on the same
    inputs, centred in float64 first."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(64, 512, generator=g, dtype=torch.float64)
    y = torch.relu(x[:, :128] + torch.randn(64, 128, generator=g, dtype=torch.float64))
    layers = [x, x + 6.0 * torch.rand(512, generator=g, dtype=torch.float64), x + 1e3,
              x * 1e20, x * 1e-20, torch.full((64, 512), 7.0, dtype=torch.float64)]
    layers32 = [t.float() for t in layers]
    centred = [t.double() - t.double().mean(0) for t in layers32]
    ref = cka_matrix(centred, [y.float().double()], kernel, debiased, dtype=torch.float64)
    got = cka_matrix(layers32, [y.float()], kernel, debiased)
    np.testing.assert_allclose(got.double().numpy(), ref.numpy(), rtol=0, atol=1e-6)
    assert got[-1, 0] == 0


@pytest.mark.parametrize("kernel,debiased", ESTIMATORS)
@pytest.mark.parametrize("scale", [1e-25, 1e-8, 1e8, 1e25])
def test_huge_and_tiny_scales(kernel, debiased, scale):
    xs, ys = _layers(n=16, seed=5)
    ref = cka_matrix(xs, ys, kernel, debiased, dtype=torch.float64)
    got = cka_matrix([(x * scale).float() for x in xs], [y.float() for y in ys], kernel, debiased)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got.double(), ref, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("debiased", [False, True])
def test_channels_last_maps_flattened_without_copy(monkeypatch, debiased):
    """A channels_last map gives the CKA of its NCHW self (feature order does not matter) and is
    flattened as a view, not a transposing copy."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(10, 4, 5, 6, generator=g)
    y = torch.randn(10, 3, 5, 6, generator=g) + x[:, :3]
    x_cl, y_cl = (t.contiguous(memory_format=torch.channels_last) for t in (x, y))
    assert not x_cl.is_contiguous()
    flat = flatten_features(x_cl, 10)
    assert flat.data_ptr() == x_cl.data_ptr() and flat.shape == (10, 120)
    torch.testing.assert_close(cka_matrix([x_cl], [y_cl], "linear", debiased),
                               cka_matrix([x], [y], "linear", debiased), rtol=1e-6, atol=1e-6)


def test_errors():
    x = torch.randn(3, 5)
    with pytest.raises(ValueError, match="at least 4 samples"):
        cka_matrix([x], [x], debiased=True)
    with pytest.raises(ValueError, match="batch size"):
        cka_matrix([torch.randn(5, 2), torch.randn(6, 2)])
    with pytest.raises(ValueError, match="kernel"):
        cka_matrix([x], kernel="poly")
    with pytest.raises(ValueError, match="batch sizes"):
        cka_matrix([torch.randn(5, 2)], [torch.randn(6, 2)])


def test_runs_outside_autocast():
    xs, ys = _layers(n=16, seed=6)
    xs = [x.float() for x in xs]
    ys = [y.float() for y in ys]
    ref = cka_matrix(xs, ys, "linear", True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cka_matrix(xs, ys, "linear", True)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref)
    # half-precision features (as an autocast forward produces) are computed in float32
    got16 = cka_matrix([x.bfloat16() for x in xs], [y.bfloat16() for y in ys], "linear", True)
    assert got16.dtype == torch.float32
    ref16 = cka_matrix([x.bfloat16().double() for x in xs], [y.bfloat16().double() for y in ys],
                       "linear", True, dtype=torch.float64)
    torch.testing.assert_close(got16.double(), ref16, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- gradients
@pytest.mark.parametrize("offset", [0.0, 1e3])   # raw Grams, and the shifted path
@pytest.mark.parametrize("debiased", [False, True])
def test_gradcheck_linear(debiased, offset):
    g = torch.Generator().manual_seed(7)
    x1 = (torch.randn(7, 2, 2, generator=g, dtype=torch.float64) + offset).requires_grad_(True)
    x2 = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    x3 = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)  # width of x1
    y = torch.randn(7, 5, generator=g, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b, c, d: cka_matrix([a, b, c], [d, b], "linear", debiased, dtype=torch.float64)
    assert torch.autograd.gradcheck(fn, (x1, x2, x3, y))


@pytest.mark.parametrize("kernel,debiased", ESTIMATORS)
def test_gradcheck_float64_kept_by_default(kernel, debiased):
    """float64 inputs without a dtype argument are computed in float64 (a float32 downcast would
    fail gradcheck's tolerances), for every kernel and estimator, and match the numpy reference."""
    g = torch.Generator().manual_seed(13)
    x = torch.randn(7, 2, 4, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 6, generator=g, dtype=torch.float64, requires_grad=True)
    ref = ref_matrix(_np([x, y]), _np([x, y]), kernel, debiased)
    got = cka_matrix([x, y], None, kernel, debiased)
    assert got.dtype == torch.float64
    np.testing.assert_allclose(got.detach().numpy(), ref, rtol=1e-10, atol=1e-12)
    # RBF: the bandwidth is detached, so gradcheck runs with it fixed at the reference's value
    s2 = [ref_rbf_sigma2(t.detach().numpy()) for t in (x, y)] if kernel == "rbf" else None
    fn = lambda a, b: cka_matrix([a, b], None, kernel, debiased, rbf_sigma2=s2)
    assert torch.autograd.gradcheck(fn, (x, y))


def test_wide_layer_matches_float64():
    """A wide layer (64 x 14,336, as a CIFAR block output) and a narrow one: the float32 CKA
    matches float64 to the float32 tolerance."""
    g = torch.Generator().manual_seed(14)
    x = torch.relu(torch.randn(64, 3 * 4096 + 2048, generator=g, dtype=torch.float64))
    y = x[:, :500] + torch.randn(64, 500, generator=g, dtype=torch.float64)
    for debiased in (False, True):
        ref = cka_matrix([x], [y], "linear", debiased)
        got = cka_matrix([x.float()], [y.float()], "linear", debiased)
        np.testing.assert_allclose(got.double().numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("scale", [1e-30, 1e30])
def test_gradient_at_extreme_scale(scale):
    g = torch.Generator().manual_seed(9)
    x = torch.randn(12, 2, 8, generator=g)
    y = torch.randn(12, 10, generator=g)
    a = x.clone().requires_grad_(True)
    b = (x * scale).requires_grad_(True)
    va, vb = cka(a, y, debiased=True), cka(b, y, debiased=True)
    va.backward()
    vb.backward()
    assert abs(va.item() - vb.item()) < 1e-5
    torch.testing.assert_close(b.grad * scale, a.grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("debiased", [False, True])
def test_gradcheck_rbf_fixed_bandwidth(debiased):
    """RBF gradients treat the bandwidth as a constant: check with a fixed sigma^2."""
    g = torch.Generator().manual_seed(8)
    x = torch.randn(7, 3, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.randn(7, 4, generator=g, dtype=torch.float64, requires_grad=True)
    s2 = [ref_rbf_sigma2(x.detach().numpy()), ref_rbf_sigma2(y.detach().numpy())]
    fn = lambda a, b: cka_matrix([a, b], None, "rbf", debiased, rbf_sigma2=s2, dtype=torch.float64)
    assert torch.autograd.gradcheck(fn, (x, y))
    # the median-heuristic version: same value, and its gradient is the fixed-bandwidth one
    a = x.detach().clone().requires_grad_(True)
    b = x.detach().clone().requires_grad_(True)
    va = cka_matrix([a, y.detach()], None, "rbf", debiased, dtype=torch.float64)[0, 1]
    vb = cka_matrix([b, y.detach()], None, "rbf", debiased, rbf_sigma2=s2, dtype=torch.float64)[0, 1]
    ref = ref_cka(ref_rbf_kernel(x.detach().numpy()), ref_rbf_kernel(y.detach().numpy()), debiased)
    assert abs(va.item() - ref) < 1e-10 and abs(vb.item() - ref) < 1e-10
    va.backward()
    vb.backward()
    torch.testing.assert_close(a.grad, b.grad)


# ---------------------------------------------------------------- minibatch accumulation
@pytest.mark.parametrize("kernel,debiased", ESTIMATORS)
def test_accumulator_matches_averaged_hsic(kernel, debiased):
    h = ref_hsic_unbiased if debiased else ref_hsic_biased
    acc = CKAAccumulator(kernel, debiased, dtype=torch.float64, keep_per_batch=True)
    sym = CKAAccumulator(kernel, debiased, dtype=torch.float64)
    cross = np.zeros((3, 2))
    sx, sy = np.zeros(3), np.zeros(2)
    for b, n in enumerate((12, 16, 10)):
        xs, ys = _layers(n=n, seed=10 + b)
        xs = [x * (10.0 ** b) for x in xs]                 # batches at different scales
        acc.update(xs, ys)
        sym.update(xs)
        Ks = [ref_kernel(x, kernel) for x in _np(xs)]
        Ls = [ref_kernel(y, kernel) for y in _np(ys)]
        cross += np.array([[h(K, L) for L in Ls] for K in Ks])
        sx += np.array([h(K, K) for K in Ks])
        sy += np.array([h(L, L) for L in Ls])
        np.testing.assert_allclose(acc.per_batch[-1].numpy(), ref_matrix(_np(xs), _np(ys), kernel, debiased),
                                   rtol=1e-9, atol=1e-12)
    expect = (cross / 3) / np.sqrt(np.outer(sx / 3, sy / 3))
    assert acc.num_batches == 3
    np.testing.assert_allclose(acc.matrix().numpy(), expect, rtol=1e-9)
    c, hx, hy = acc.hsic()
    np.testing.assert_allclose(c.numpy(), cross / 3, rtol=1e-9)
    np.testing.assert_allclose(hx.numpy(), sx / 3, rtol=1e-9)
    ms = sym.matrix().numpy()
    np.testing.assert_allclose(ms, ms.T, rtol=1e-12)
    np.testing.assert_allclose(np.diag(ms), 1.0, rtol=1e-12)


def test_hsic_terms_float32_raw_units():
    xs, ys = _layers(n=16, seed=20)
    xs = [x * 1e3 for x in xs]
    c, hx, hy = hsic_terms([x.float() for x in xs], [y.float() for y in ys])
    K = ref_linear_kernel(xs[1].numpy())
    L = ref_linear_kernel(ys[0].numpy())
    assert c.dtype == torch.float64
    np.testing.assert_allclose(float(c[1, 0]), ref_hsic_biased(K, L), rtol=1e-5)
    np.testing.assert_allclose(float(hx[1]), ref_hsic_biased(K, K), rtol=1e-5)
