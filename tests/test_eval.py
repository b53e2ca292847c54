"""Probes on controlled features: separable sets are solved, shuffled labels are at chance,
kNN matches a brute-force reference, and features are cached."""

import pytest
import torch

from imagejepa.eval.attentive import AttentiveProbe, attentive_probe
from imagejepa.eval.features import FeatureCache, FeatureExtractor, FeatureRequest
from imagejepa.eval.heads import standardize, topk_accuracy
from imagejepa.eval.knn import knn_probe, nearest_neighbours, vote
from imagejepa.eval.linear import linear_probe
from imagejepa.eval.lowshot import balanced_subset, lowshot_probe, shots_per_class

CLASSES = 10


def clusters(n, dim=32, seed=0, spread=0.3):
    """``n`` points around 10 random unit centres (well separated in 32-D), labels cycling."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(CLASSES, dim, generator=torch.Generator().manual_seed(99))
    centres = torch.nn.functional.normalize(centres, dim=1)
    y = torch.arange(n) % CLASSES
    return centres[y] * 3 + spread * torch.randn(n, dim, generator=g), y


def tokens_of(x, seed, t=9):
    """Patch tokens ``(N, T, D)``: each token is the image's point plus its own noise."""
    g = torch.Generator().manual_seed(seed)
    return x[:, None, :] + 0.5 * torch.randn(len(x), t, x.shape[1], generator=g)


def shuffled(y, seed=5):
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))]


@pytest.fixture(scope="module")
def separable():
    (xtr, ytr), (xte, yte) = clusters(1000, seed=0), clusters(500, seed=1)
    return xtr, ytr, xte, yte


CHANCE_BOUND = 0.18  # 10 classes, 500 test images: chance is 0.10 with std 0.013


def test_linear_probe_separates_and_is_at_chance_on_shuffled_labels(separable):
    xtr, ytr, xte, yte = separable
    r = linear_probe(xtr, ytr, xte, yte)
    assert r["top1"] >= 0.99 and r["top5"] == 1.0 and r["solver"] == "lbfgs"
    assert set(r["holdout_top1"]) == {f"shrink={s:g},wd={w:g}" for s in (0, 1)
                                      for w in (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1)}
    assert r["selection"] == "5-fold cross-validation"  # 1,000 training points: too few for 10%
    assert linear_probe(xtr, shuffled(ytr), xte, yte)["top1"] < CHANCE_BOUND
    fast = dict(solver="adamw", lrs=(1e-2,), weight_decays=(1e-4, 1e-2), epochs=10, batch_size=128)
    r = linear_probe(xtr, ytr, xte, yte, **fast)
    assert r["top1"] >= 0.99 and set(r["holdout_top1"]) == {"lr=0.01,wd=0.0001", "lr=0.01,wd=0.01"}
    assert linear_probe(xtr, shuffled(ytr), xte, yte, **fast)["top1"] < CHANCE_BOUND
    assert linear_probe(xtr, ytr, xte, yte, batchnorm=True, **fast)["top1"] >= 0.99
    with pytest.raises(ValueError, match="batchnorm needs"):
        linear_probe(xtr, ytr, xte, yte, batchnorm=True)


def test_linear_probe_on_few_images_does_not_blow_up_noise_directions():
    """400 training points, 16 directions that carry the classes and 300 of small noise: full
    whitening gives the noise as much weight as the signal and the probe overfits; the
    shrunk whitening the grid also tries is chosen by cross-validation and generalises."""
    g = torch.Generator().manual_seed(3)

    def data(n, seed):
        x, y = clusters(n, dim=16, seed=seed, spread=1.5)
        return torch.cat([x, 0.05 * torch.randn(n, 300, generator=g)], 1), y

    (xtr, ytr), (xte, yte) = data(400, 0), data(2000, 1)
    full = linear_probe(xtr, ytr, xte, yte, shrink_grid=(0.0,))
    chosen = linear_probe(xtr, ytr, xte, yte)
    assert chosen["whitening_shrink"] == 1.0
    assert chosen["top1"] > full["top1"] + 0.05, (chosen["top1"], full["top1"])


def test_whitening_with_fewer_images_than_features_equals_the_covariance_route():
    """With N <= D the principal axes come from the data's SVD: the whitened features are the
    covariance eigen-decomposition's, up to a rotation (so their Gram matrix is the same),
    and each kept direction has unit variance."""
    from imagejepa.eval.heads import principal_axes, whiten

    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 8, generator=g) @ torch.randn(8, 90, generator=g) + torch.randn(40, 90, generator=g)
    other = torch.randn(5, 90, generator=g)
    mean, variances, axes = principal_axes(x)
    assert axes.shape == (90, 40) and variances.shape == (40,)  # from the SVD: rank <= N
    eigvals, eigvecs = torch.linalg.eigh(torch.cov((x.double() - mean).T))
    for shrink in (0.0, 1.0):
        fast = whiten(x, other, shrink=shrink)
        slow = whiten(x, other, shrink=shrink, axes=(mean, eigvals, eigvecs))
        for a, b in zip(fast, slow):
            torch.testing.assert_close(a @ a.T, b @ b.T, rtol=1e-4, atol=1e-4)
    white = whiten(x)[0]
    torch.testing.assert_close(white.var(0), torch.ones(white.shape[1]), rtol=1e-4, atol=1e-4)


def test_knn_separates_and_is_at_chance_on_shuffled_labels(separable):
    xtr, ytr, xte, yte = separable
    r = knn_probe(xtr, ytr, xte, yte, ks=(10, 20))
    assert r["k=10"]["top1"] >= 0.99 and r["k=20"]["top1"] >= 0.99
    assert knn_probe(xtr, shuffled(ytr), xte, yte, ks=(10,))["k=10"]["top1"] < CHANCE_BOUND


def test_lowshot_separates_and_is_at_chance_on_shuffled_labels(separable):
    xtr, ytr, xte, yte = separable
    r = lowshot_probe(xtr, ytr, xte, yte, shots=("1", "5", "1%"), seeds=2)
    assert r["5-shot"]["top1_mean"] >= 0.98 and len(r["5-shot"]["top1_runs"]) == 2
    assert r["1%-shot"]["per_class"] == 1  # 1% of 1000 images over 10 classes
    bad = lowshot_probe(xtr, shuffled(ytr), xte, yte, shots=("10",), seeds=2)
    assert bad["10-shot"]["top1_mean"] < CHANCE_BOUND


def test_attentive_probe_separates_and_is_at_chance_on_shuffled_labels(separable):
    xtr, ytr, xte, yte = separable
    ttr, tte = tokens_of(xtr, 2), tokens_of(xte, 3)
    fast = dict(lrs=(3e-3,), epochs=8, batch_size=64)
    assert attentive_probe(ttr, ytr, tte, yte, **fast)["top1"] >= 0.97
    assert attentive_probe(ttr, shuffled(ytr), tte, yte, **fast)["top1"] < CHANCE_BOUND


def test_attentive_probe_shapes():
    probe = AttentiveProbe(dim=12, num_classes=5)
    assert probe(torch.randn(3, 7, 12)).shape == (3, 5)
    assert probe.attn.num_heads == 4 and AttentiveProbe(10, 2).attn.num_heads == 2


def brute_force_knn(xtr, ytr, xte, k, temperature, classes):
    a = torch.nn.functional.normalize(xtr, dim=1)
    b = torch.nn.functional.normalize(xte, dim=1)
    sims = b @ a.T
    preds = []
    for row in sims:
        top = row.argsort(descending=True)[:k]
        scores = torch.zeros(classes)
        for j in top:
            scores[ytr[j]] += torch.exp(row[j] / temperature)
        preds.append(scores.argmax())
    return torch.stack(preds)


def test_knn_equals_brute_force_in_small_chunks():
    g = torch.Generator().manual_seed(0)
    xtr, xte = torch.randn(300, 16, generator=g), torch.randn(90, 16, generator=g)
    ytr, yte = torch.randint(0, 4, (300,), generator=g), torch.randint(0, 4, (90,), generator=g)
    s_full, i_full = nearest_neighbours(xtr, xte, k=20, query_chunk=10_000, train_chunk=10_000)
    s_chunk, i_chunk = nearest_neighbours(xtr, xte, k=20, query_chunk=7, train_chunk=13)
    assert torch.equal(i_full, i_chunk) and torch.allclose(s_full, s_chunk)
    for k in (1, 5, 20):
        expected = brute_force_knn(xtr, ytr, xte, k, 0.07, 4)
        got = vote(s_chunk[:, :k], ytr[i_chunk[:, :k]], 4).argmax(1)
        assert torch.equal(got, expected)
    r = knn_probe(xtr, ytr, xte, yte, ks=(5,))
    expected = (brute_force_knn(xtr, ytr, xte, 5, 0.07, 4) == yte).float().mean().item()
    assert r["k=5"]["top1"] == pytest.approx(expected)


def test_shots_and_balanced_subsets():
    assert shots_per_class("1%", 60_000, 10) == 60
    assert shots_per_class("5", 60_000, 10) == 5
    with pytest.raises(ValueError, match="shots must be"):
        shots_per_class("0", 100, 10)
    y = torch.arange(100) % 10
    idx = balanced_subset(y, 3, seed=0)
    assert torch.bincount(y[idx], minlength=10).tolist() == [3] * 10
    assert not torch.equal(idx, balanced_subset(y, 3, seed=1))


def test_standardize_and_topk():
    a, b = standardize(torch.tensor([[1.0, 10.0], [3.0, 30.0]]), torch.tensor([[2.0, 20.0]]))
    assert torch.allclose(a.mean(0), torch.zeros(2)) and torch.allclose(b, torch.zeros(1, 2))
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.2]])
    assert topk_accuracy(logits, torch.tensor([1, 2]), 1) == 0.5
    assert topk_accuracy(logits, torch.tensor([1, 2]), 2) == 1.0


def test_feature_cache_hits_and_keys(tiny_checkpoint, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    ex = FeatureExtractor(tiny_checkpoint, "synthetic", cache=cache, progress=False)
    first = ex(FeatureRequest("target"), "test")
    assert (cache.hits, cache.misses) == (0, 1)
    again = FeatureExtractor(tiny_checkpoint, "synthetic", cache=cache, progress=False)(
        FeatureRequest("target"), "test")
    assert (cache.hits, cache.misses) == (1, 1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert first[0].shape == (500, 192)
    ex(FeatureRequest("random"), "test")  # another source: another entry
    ex(FeatureRequest("context"), "test")
    assert cache.misses == 3 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 3
    patches = ex(FeatureRequest("target", patch_tokens=True), "test")[0]
    assert patches.shape == (500, 16, 192) and patches.dtype == torch.float16
    assert torch.allclose(patches.float().mean(1), first[0], atol=2e-3)


def test_feature_cache_ignores_a_damaged_entry(tiny_checkpoint, tmp_path):
    cache = FeatureCache(tmp_path / "cache")
    ex = FeatureExtractor(tiny_checkpoint, "synthetic", cache=cache, progress=False)
    first = ex(FeatureRequest("target"), "test")[0]
    (entry,) = (tmp_path / "cache").glob("*.safetensors")
    entry.write_bytes(entry.read_bytes()[:100])
    assert torch.equal(ex(FeatureRequest("target"), "test")[0], first)
    assert cache.hits == 0 and cache.misses == 2
