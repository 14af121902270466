"""The GPU path, on a CPU-only machine (docs/reliability.md, devices; docs/performance.md, the GPU path).

Where a defect only shows on CUDA the device is simulated: a trial whose device is another
one than where its tensors are (``meta`` stands in for ``cuda``), a monkeypatched
``torch.cuda``, a checkpoint config written by a GPU worker on another node.
"""
from __future__ import annotations

import json
import os
import types

import pytest
import torch

from trainable.config import ConfigError, TrialConfig
from trainable.training import resources as res
from trainable.experiment.loop import Experiment
from trainable.training.warmup import WarmupCache

OTHER = torch.device("meta")  # what `map_location=<the trial's device>` would have produced on a GPU


def _cfg(cache_dir, **kw):
    base = dict(defense="fgsm_at", warmup=4, iterations=4, batch_size=16, steps_per_report=2, val_subset=20,
                val_columns=["natural"], test_subset=20, eval_columns=["natural"], cache_dir=str(cache_dir),
                threads=1, augment=True)
    base.update(kw)
    return TrialConfig.from_dict(base)


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- checkpoints
def test_restore_loads_onto_the_cpu_whatever_the_trial_device(tmp_path):
    """Restoring a checkpoint on CUDA failed: the state was mapped to the trial's device and the
    sampler's RNG state refused a non-CPU tensor (every retry, --resume and figure2)."""
    cfg = _cfg(tmp_path / "cache", iterations=6)
    a = Experiment(cfg, use_cache=False)
    a.step()
    a.save(tmp_path / "ck")
    a.step()
    ref = {k: v.clone() for k, v in a.classifier.state_dict().items()}
    b = Experiment(cfg, use_cache=False)
    b.device = OTHER  # the trial's device is not where torch.load should put the state
    b.restore(tmp_path / "ck")
    assert b.iteration == 2
    b.device = torch.device("cpu")
    b.step()
    assert _same(b.classifier.state_dict(), ref)


def test_from_checkpoint_drops_the_writers_execution_settings(tmp_path):
    """A checkpoint written by a GPU trial on another node carried its device, share, threads and
    that node's paths into figure2 and the benches."""
    cfg = _cfg(tmp_path / "cache")
    a = Experiment(cfg, use_cache=False)
    a.step()
    a.save(tmp_path / "ck")
    conf = json.loads((tmp_path / "ck" / "config.json").read_text())
    conf.update(device="cuda", gpu_fraction=0.25, threads=7, data_root="/nonexistent/node-b/data",
                cache_dir="/nonexistent/node-b/cache")
    (tmp_path / "ck" / "config.json").write_text(json.dumps(conf))
    said: list[str] = []
    b = Experiment.from_checkpoint(tmp_path / "ck", log=said.append)
    assert b.device.type == "cpu" and b.cfg.gpu_fraction == 0 and b.cfg.threads == 0
    assert b.cfg.data_root == TrialConfig.data_root and b.cfg.cache_dir == TrialConfig.cache_dir
    assert any("does not exist here" in m for m in said)
    assert b.iteration == 2


# ----------------------------------------------------------------------------- warm-up cache
def test_warmup_cache_loads_onto_the_cpu_whatever_the_trial_device(tmp_path):
    """On CUDA the cached sampler state failed to load, the error was swallowed and the warm-up ran
    again on top of already warmed weights: every later trial stacked one more warm-up."""
    cfg = _cfg(tmp_path / "cache")
    a = Experiment(cfg)
    a.train(cfg.warmup)  # computes and caches the warm-up
    warmed = {k: v.clone() for k, v in a.classifier.state_dict().items()}
    b = Experiment(cfg, use_cache=False)
    b.device = OTHER
    said: list[str] = []
    cache = WarmupCache(cfg.resolved(), log=said.append)
    assert cache.load(b), said
    assert b.iteration == cfg.warmup
    assert _same(b.classifier.state_dict(), warmed)
    assert torch.equal(b.sampler.generator.get_state(), a.sampler.generator.get_state())


def test_bad_warmup_cache_is_discarded_whole_never_half_applied(tmp_path):
    cfg = _cfg(tmp_path / "cache")
    a = Experiment(cfg)
    a.train(cfg.warmup)
    path = a.warmup_cache.path
    st = torch.load(path, weights_only=True)
    st["sampler"]["rng"] = torch.zeros(3, dtype=torch.uint8)  # classifier and optimiser fine, the sampler not
    torch.save(st, path)
    said: list[str] = []
    b = Experiment(cfg, use_cache=False)
    fresh = {k: v.clone() for k, v in b.classifier.state_dict().items()}
    fresh_opt = json.dumps(b.clf_opt.state_dict()["param_groups"])
    assert not WarmupCache(cfg.resolved(), log=said.append).load(b)
    assert _same(b.classifier.state_dict(), fresh)  # nothing of the bad entry stays applied
    assert json.dumps(b.clf_opt.state_dict()["param_groups"]) == fresh_opt and not b.clf_opt.state_dict()["state"]
    assert b.iteration == 0
    assert not path.exists()  # discarded: the next trial to finish its warm-up rebuilds it
    assert len(said) == 1 and "discarded" in said[0]


def test_cache_temporary_names_differ_across_nodes_with_one_pid(tmp_path, monkeypatch):
    """Temporary files were named by pid only: two nodes (or containers) with the same pid
    writing into one shared cache wrote the same temporary file."""
    from trainable.training import surrogates

    cfg = _cfg(tmp_path / "cache")
    a = Experiment(cfg, use_cache=False)
    monkeypatch.setattr(os, "getpid", lambda: 4242)
    written: list[str] = []
    real_save = torch.save
    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: (written.append(str(f)), real_save(obj, f, *a, **k)))
    cache = WarmupCache(cfg.resolved())
    cache.save(a)
    cache.save(a)
    assert len(written) == 2 and written[0] != written[1]
    dirs: list[str] = []
    real_state = surrogates.save_state
    monkeypatch.setattr(surrogates, "save_state", lambda d, *a, **k: (dirs.append(os.path.basename(str(d))),
                                                                    real_state(d, *a, **k)))
    tiny = _cfg(tmp_path / "c1", defense="plain", warmup=0, iterations=2, transfer_iterations=2)
    surrogates.train_surrogate(tiny, "plain")
    surrogates.train_surrogate(tiny.replace(cache_dir=str(tmp_path / "c2")), "plain")
    assert len(dirs) == 2 and dirs[0] != dirs[1]


# ------------------------------------------------------------------------ sampler, augmentation
def test_batches_are_drawn_on_the_device_without_host_copies(tmp_path, monkeypatch):
    """The sampler's indices, the crop offsets and the flips were drawn on the host and copied to
    the device every iteration (three to four blocking copies)."""
    exp = Experiment(_cfg(tmp_path / "cache", defense="plain", warmup=0), use_cache=False)
    assert exp.sampler.perm.device == exp.device and exp.aug_rng.device == exp.device
    moves: list[str] = []
    real_to = torch.Tensor.to

    def spy(self, *args, **kwargs):
        if any(isinstance(a, (torch.device, str)) for a in args) or "device" in kwargs:
            moves.append(repr(args))
        return real_to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", spy)
    exp.train(3)
    assert moves == []


def test_device_sampler_state_round_trips_on_the_cpu():
    from trainable.data.loading import BatchSampler

    s = BatchSampler(50, 8, seed=3)
    s.next()
    state = s.state_dict()
    assert all(v.device.type == "cpu" for v in state.values())
    t = BatchSampler(50, 8, seed=9)
    t.load_state_dict(state)
    assert torch.equal(t.next(), s.next())


# ------------------------------------------------------------------------------ figure 2
def test_figure2_moves_the_fresh_l2lstar_generator_to_the_device(tmp_path, monkeypatch):
    """The `.to(device)` of figure2's L2L* generator was inside a comment: it stayed on the CPU."""
    from trainable.evaluation import loss_curves

    moved: list[str] = []

    class Spy(loss_curves.L2LStarGenerator):
        def to(self, *args, **kwargs):
            moved.append(str(args[0] if args else kwargs.get("device")))
            return super().to(*args, **kwargs)

    monkeypatch.setattr(loss_curves, "L2LStarGenerator", Spy)
    exp = Experiment(_cfg(tmp_path / "cache", defense="plain", warmup=0, gen_attack_steps=1, gen_width=4),
                     use_cache=False)
    data = loss_curves.compute_figure2(exp.classifier, exp.cfg, exp.data, n_images=4, steps=2, draws=1)
    assert moved == [str(exp.device)]
    assert set(data["methods"]) == {"pgd", "l2l", "l2lda"}


# ----------------------------------------------------------------------------- the device
@pytest.fixture
def fake_cuda(monkeypatch):
    """torch.cuda as a node with one 80 GiB card would show it (nothing is allocated)."""
    calls: dict[str, list] = {"fraction": []}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_properties",
                        lambda i=0: types.SimpleNamespace(total_memory=80 * 2**30, name="Fake"))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction",
                        lambda f, device=None: calls["fraction"].append((f, device)))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    return calls


def _exec_cfg(**kw) -> TrialConfig:
    return TrialConfig.from_dict({"defense": "plain", **kw})


def test_a_gpu_share_without_usable_cuda_refuses_to_train_on_the_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(res.DeviceError, match=r"given 0.25 GPU but CUDA is not usable"):
        res.resolve_device(_exec_cfg(gpu_fraction=0.25))
    with pytest.raises(res.DeviceError, match=r"given 1 GPU"):
        res.resolve_device(_exec_cfg(gpu_fraction=1.0))
    assert res.resolve_device(_exec_cfg()).type == "cpu"  # no share: the CPU is what was asked for


def test_a_device_ordinal_with_a_share_is_refused(fake_cuda):
    with pytest.raises(res.DeviceError, match=r"exactly one device to a trial"):
        res.resolve_device(_exec_cfg(device="cuda:1", gpu_fraction=0.25))
    assert fake_cuda["fraction"] == []


def test_memory_cap_leaves_room_for_the_cuda_context(fake_cuda):
    p = res.place(_exec_cfg(gpu_fraction=0.25))
    assert p.device == torch.device("cuda", 0)
    ((fraction, index),) = fake_cuda["fraction"]
    assert index == 0
    assert fraction == pytest.approx((0.25 * 80 * 2**30 - res.CONTEXT_RESERVE_BYTES) / (80 * 2**30))
    tags = p.tags()
    assert tags["device/name"] == "cuda:0" and tags["device/cuda_visible_devices"] == "3"
    assert tags["device/memory_cap"].startswith("19.25 GiB of 80.00 GiB")
    res.place(_exec_cfg(gpu_fraction=1.0))  # a whole card: no cap
    assert len(fake_cuda["fraction"]) == 1


def test_out_of_memory_names_the_trial_and_its_share(fake_cuda):
    p = res.place(_exec_cfg(gpu_fraction=0.25))
    with pytest.raises(res.TrialOutOfMemory, match=r"trial smoke_00003 .* share of 0.25 GPU \(memory cap 19.25 GiB"):
        with res.naming_oom("smoke_00003", p):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


def test_deterministic_sets_cudnn_tf32_and_algorithms():
    try:
        res.place(_exec_cfg(deterministic=True))
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
        assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
        assert torch.are_deterministic_algorithms_enabled()
        assert os.environ.get("CUBLAS_WORKSPACE_CONFIG")
        assert _exec_cfg(deterministic=True).flat()["deterministic"] == "True"  # an MLflow param like the rest
    finally:
        res.place(_exec_cfg())
    assert not torch.backends.cudnn.deterministic and not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(ConfigError, match="deterministic: expected true/false"):
        _exec_cfg(deterministic="yes")


def test_compile_workers_follow_the_cpu_share(monkeypatch):
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "compile_threads", 16)
    res.set_threads(1, compile_workers=True)
    assert inductor_config.compile_threads == 1
