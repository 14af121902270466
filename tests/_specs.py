"""Study documents the tests share: malformed ones, each with the start of its one-line message
(``BAD_SPECS``), resumable ones (``RESUME_SPECS``), a small good one (``GOOD_STUDY``) and
``spec_file``, which writes one to a folder."""
from __future__ import annotations

from pathlib import Path

import yaml

# Malformed studies: each fails in one line naming the key.
BAD_SPECS = [
    # (YAML document, expected start of the one-line message)
    ("name: t\nbase: {dataset: mnist5k\n", "spec: YAML syntax error at line"),
    ("- just\n- a list\n", "spec: expected a mapping at the top level"),
    ("base: {}\nspace: {seed: 0}\n", "name: required key is missing"),
    ("name: t\nspace: {seed: 0}\nsurch: {type: grid}\n", "surch: unknown key (known: name, description"),
    ("name: t\nbase: {epz: 0.3}\nspace: {seed: 0}\n", "base.epz: unknown config key"),
    ("name: t\nbase: {eps: 2.0}\nspace: {seed: 0}\n", "base.eps: must be in (0, 1]"),
    ("name: t\nbase: {T: 0}\nspace: {seed: 0}\n", "base.T: must be >= 1"),
    ("name: t\nbase: {dataset: imagenet}\nspace: {seed: 0}\n", "base.dataset: unknown dataset 'imagenet'"),
    ("name: t\nbase: {defense: madry}\nspace: {seed: 0}\n", "base.defense: unknown defense 'madry'"),
    ("name: t\nbase: {batch_size: '100'}\nspace: {seed: 0}\n", "base.batch_size: expected an integer"),
    ("name: t\nspace: {}\n", "space: is empty"),
    ("name: t\nspace: {lam: {loguniform: [0, 1]}}\nsearch: {type: random}\n", "space.lam.loguniform: low must be > 0"),
    ("name: t\nspace: {lam: {uniform: [-1, 1]}}\nsearch: {type: random}\n", "space.lam.uniform[0]: must be >= 0"),
    ("name: t\nspace: {T: {int: [0, 5]}}\nsearch: {type: random}\n", "space.T.int[0]: must be >= 1"),
    ("name: t\nspace: {T: {uniform: [1, 5]}}\nsearch: {type: random}\n", "space.T.uniform: T is an integer parameter"),
    ("name: t\nspace: {lam: {uniform: [0.5, 0.1]}}\nsearch: {type: random}\n", "space.lam.uniform: low must be < high"),
    ("name: t\nspace: {defense: {grid: []}}\n", "space.defense.grid: expected a non-empty list"),
    ("name: t\nspace: {defense: {grid: [plain, madry]}}\n", "space.defense.grid[1]: unknown defense 'madry'"),
    ("name: t\nspace: {lr: {grid: [0.1], choice: [0.2]}}\n", "space.lr: give exactly one of"),
    ("name: t\nspace: {lr: {normal: [0, 1]}}\n", "space.lr.normal: unknown key"),
    ("name: t\nspace: {wings: {grid: [1, 2]}}\n", "space.wings: unknown config key"),
    ("name: t\nspace: {lam: null}\n", "space.lam: is empty; give a value or one of grid, choice"),
    ("name: t\nspace:\n  lam:\n", "space.lam: is empty; give a value or one of grid, choice"),
    ("name: t\nbase: {seed: 1}\nspace: {seed: {grid: [1, 2]}}\n", "space.seed: also set in base"),
    ("name: t\nspace: {lam: {choice: [0.1, 1], when: {diversty: true}}}\nsearch: {type: random}\n",
     "space.lam.when.diversty: unknown config key"),
    ("name: t\nspace: {diversity: {choice: [true]}, lam: {choice: [0.1], when: {diversity: false}}}\n"
     "search: {type: random}\n", "space.lam.when.diversity: no value of diversity"),
    ("name: t\nspace: {a_cycle: 0, T: {choice: [1, 2], when: {recursive: true}}, recursive: {choice: [true], "
     "when: {T: 2}}}\nsearch: {type: random}\n", "space.a_cycle: unknown config key"),
    ("name: t\nspace: {T: {choice: [1, 2], when: {recursive: true}}, recursive: {choice: [true], when: {T: 2}}}\n"
     "search: {type: random}\n", "space.T.when: conditions form a cycle"),
    ("name: t\nspace: {lam: {loguniform: [0.001, 1]}}\nsearch: {type: grid}\n",
     "space.lam.loguniform: grid search takes only grid or fixed values"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nsearch: {type: optuna}\n", "space.seed.grid: optuna search samples"),
    ("name: t\nspace: {seed: 0}\nsearch: {type: optuna}\n", "space: optuna search needs at least one"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nsearch: {type: bayes}\n", "search.type: Input should be"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nsearch: {metric: matrix/worst}\n",
     "search.metric: 'matrix/worst' is not a validation metric"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nsearch: {metric: val/pgd100}\n", "search.metric: 'val/pgd100' is not reported"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nsearch: {mode: maximise}\n", "search.mode: expected 'max' or 'min'"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nsearch: {metric: [val/natural, val/worst], mode: [max]}\n",
     "search.mode: 1 modes for 2 metrics"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nsearch: {num_samples: 0}\n", "search.num_samples: must be >= 1"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nsearch: {num_samples: '4'}\n", "search.num_samples: Input should be a valid integer"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nsearch: {sampler: tpe}\n", "search.sampler: only optuna search"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nsearch: {n_startup_trials: 3}\n", "search.n_startup_trials: only Optuna's TPE"),
    ("name: t\nspace: {lr: {choice: [0.1, 0.2]}}\nsearch: {type: optuna, sampler: nsga2, n_startup_trials: 3}\n",
     "search.n_startup_trials: only Optuna's TPE sampler"),
    ("name: t\nspace: {lr: {choice: [0.1, 0.2]}}\nsearch: {type: optuna, n_startup_trials: 0}\n",
     "search.n_startup_trials: must be >= 1"),
    ("name: t\nspace: {lr: {choice: [0.1, 0.2]}}\nsearch: {type: optuna, storage: optuna.db}\n",
     "search.storage: expected a database URL"),
    ("name: t\nspace: {lr: {choice: [0.1, 0.2]}}\nsearch: {type: optuna, metric: [val/natural, val/worst]}\n"
     "scheduler: {type: asha}\n", "scheduler.type: ASHA takes one metric"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nscheduler: {type: asha, grace_period: 0}\n", "scheduler.grace_period: must be >= 1"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nscheduler: {type: asha, reduction_factor: 1}\n",
     "scheduler.reduction_factor: must be > 1"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nscheduler: {max_t: 10}\n", "scheduler.type: ASHA settings given"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nresources: {gpu: -0.5}\n", "resources.gpu: must be 0, a fraction"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nresources: {gpu: 1.5}\n", "resources.gpu: a share above 1 must be a whole"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nresources: {cpu: 0}\n", "resources.cpu: must be > 0"),
    ("name: t\nbase: {device: cpu}\nspace: {seed: {grid: [0, 1]}}\nresources: {gpu: 1}\n",
     "resources.gpu: 1.0 GPU per trial but base.device is 'cpu'"),
    # what a trial could never run on its device (docs/reliability.md, devices)
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nresources: {gpu: 2}\n", "resources.gpu: 2 GPUs per trial, but a trial trains on one"),
    ("name: t\nbase: {device: 'cuda:1'}\nspace: {seed: {grid: [0, 1]}}\nresources: {gpu: 0.25}\n",
     "base.device: 'cuda:1' with resources.gpu 0.25: Ray exposes exactly one device"),
    ("name: t\nbase: {amp: bf16}\nspace: {seed: {grid: [0, 1]}}\n", "base.amp: bf16 runs on CUDA only, but resources.gpu is 0"),
    ("name: t\nspace: {amp: {grid: [null, bf16]}}\n", "space.amp: bf16 runs on CUDA only, but resources.gpu is 0"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nfailure: {max_failures: -2}\n", "failure.max_failures: must be >= -1"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\ncheckpoint: {keep: 0}\n", "checkpoint.keep: must be >= 1"),
    ("name: t\nspace: {seed: {grid: [0, 1]}}\nevaluation: {columns: [natural, pgd7]}\n",
     "evaluation.columns: unknown attack column 'pgd7'"),
    ("name: t\nbase: {test_subset: 10}\nspace: {seed: 0}\nevaluation: {test_subset: 20}\n",
     "evaluation.test_subset: also set as base.test_subset"),
    ("name: 'a b'\nspace: {seed: 0}\n", "name: must be letters, digits"),
    ("name: t\nspace: {lam: {grid: [0.1, 0.2], when: {diversity: true}}}\n", "space.lam.when: a grid parameter cannot be conditional"),
]


# Studies an interrupted sweep resumes: 2 trials one at a time, 10 reports each (CACHE: the cache folder).
RESUME_SPECS = {
    "grid": """\
name: resumable
base: {dataset: mnist5k, defense: plain, batch_size: 50, warmup: 0, iterations: 600, steps_per_report: 60,
       val_subset: 50, val_columns: [natural], cache_dir: CACHE}
space: {seed: {grid: [0, 1]}}
search: {type: grid, metric: val/natural, mode: max, max_concurrent: 1}
resources: {cpu: 1}
checkpoint: {every: 1, keep: 2}
evaluation: {columns: [natural, fgsm], test_subset: 20}
""",
    # Optuna: the searcher's state must survive, or the resumed sweep would propose new trials.
    "optuna": """\
name: resumable
base: {dataset: mnist5k, defense: plain, batch_size: 50, warmup: 0, iterations: 600, steps_per_report: 60,
       val_subset: 50, val_columns: [natural], cache_dir: CACHE}
space: {lr: {loguniform: [0.005, 0.05]}}
search: {type: optuna, metric: val/natural, mode: max, num_samples: 2, max_concurrent: 1, seed: 3}
resources: {cpu: 1}
checkpoint: {every: 1, keep: 2}
evaluation: {columns: [natural, fgsm], test_subset: 20}
""",
}


GOOD_STUDY = {"name": "good", "base": {"dataset": "mnist5k", "defense": "plain", "iterations": 2, "warmup": 0,
                                       "steps_per_report": 2},
              "space": {"seed": {"grid": [0, 1]}}}


def spec_file(tmp: Path, raw: dict | None = None, text: str | None = None, name: str = "spec.yaml") -> Path:
    """`tmp`/`name` holding `text` (str or bytes) as given, else `raw` (default GOOD_STUDY) as YAML."""
    p = tmp / name
    if text is not None:
        p.write_bytes(text.encode() if isinstance(text, str) else text)
    else:
        p.write_text(yaml.safe_dump(raw or GOOD_STUDY, sort_keys=False))
    return p
