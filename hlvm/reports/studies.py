"""Recipe studies: training options chosen by a validation study of their own, beside a family's search.

A family's search (:mod:`hlvm.reports.search`) decides its architecture and the options it spans;
an option outside that space (an exponential moving average of the weights, Polyak & Juditsky 1992)
joins the family's recipe only after a study of its own on the validation split: the same model
trained twice for the same budget, with and without the option, each scored by its ELBO on the
10,000 held-out training images (``benchmarks/baseline_elbo.py --split validation``; never the
test set).  The winning option is part of the class's ``training_defaults``, and the results
rows train with it (:func:`study_options`), so that every row is its family's recipe.

Each study is two JSON files in ``docs/studies/``; :func:`study_entries` reads them back for the
row's entry of ``results.json`` and the page.  The studies trained the full-size models on MNIST, so
only a profile on that data applies them (:attr:`hlvm.reports.results.Profile.studies`).
"""

from __future__ import annotations

import json
import os

__all__ = ["STUDIES", "study_options", "study_entries", "study_lines"]

#: {registered model: [({option: value}, (the study with the option, the study without it))]} — paths
#: relative to the results' folder (``docs/``); every row of the model trains with its options
STUDIES = {
    "vae": [({"ema": 0.999}, ("studies/pyro_example_vae_validation_ema_0_999.json",
                              "studies/pyro_example_vae_validation_default.json"))],
    "hvae-bu": [({"ema": 0.999}, ("studies/hvae_bu_validation_ema_0_999.json",
                                  "studies/hvae_bu_validation_default.json"))],
    "hvae-td": [({"ema": 0.999}, ("studies/hvae_td_validation_ema_0_999.json",
                                  "studies/hvae_td_validation_default.json"))],
    "vdm": [({"ema": 0.999}, ("studies/vdm_validation_ema_0_999.json", "studies/vdm_validation_default.json"))],
}


def study_options(model: str) -> dict:
    """The trainer options that won the studies of ``model`` (empty where it has none)."""
    out = {}
    for option, _ in STUDIES.get(model, []):
        out.update(option)
    return out


def study_entries(model: str, root: str = "docs") -> list[dict]:
    """The studies of ``model`` as a results row of it records them: per study the option, its files and the
    validation ELBO with and without it (``root``: the results' folder, which holds ``studies/``).

    Raises:
        ValueError: a study file that is missing or was not scored on the validation split.
    """
    entries = []
    for option, files in STUDIES.get(model, []):
        paths = [os.path.join(root, f) for f in files]
        missing = [p for p in paths if not os.path.exists(p)]
        if missing:
            raise ValueError(f"the {model} study file {missing[0]} is missing (its option {option} needs it)")
        won, lost = (json.load(open(p)) for p in paths)
        if won["split"] != "validation" or lost["split"] != "validation":
            raise ValueError(f"the {model} study {files[0]} was not scored on the validation split")
        entries.append({"option": option, "files": list(files), "epochs": won["epochs"],
                        "elbo_with": won["rows"]["hlvm-train"]["elbo"],
                        "elbo_without": lost["rows"]["hlvm-train"]["elbo"]})
    return entries


def study_lines(rows: list[dict]) -> list[str]:
    """The page's section on the studies: one line per study a row trained with, and the rows
    trained before their family's studies (without the option) named below the table."""
    found = [(r["row"], s) for r in rows for s in r.get("studies", [])]
    before = [r["row"] for r in rows if "studies" not in r and r.get("model") in STUDIES]
    if not found and not before:
        return []
    lines = ["", "## Recipe studies (validation split)", "",
             "Options beyond a family's search, each kept only where it won a study of its own: the family's "
             "recipe trained twice for the same budget on the first 50,000 training images, with and without the "
             "option, each scored by its ELBO on the last 10,000 (one seed). The rows listed here trained with it.", "",
             "| row | option | epochs | validation ELBO with | without | files |", "|---|---|---|---|---|---|"]
    for row, s in found:
        option = ", ".join(f"{k}={v}" for k, v in s["option"].items())
        lines.append(f"| {row} | {option} | {s['epochs']} | {s['elbo_with']:.2f} | {s['elbo_without']:.2f} | "
                     f"{', '.join(os.path.basename(f) for f in s['files'])} |")
    if before:
        lines += ["", f"Trained before their family's study, without its option: {', '.join(before)}."]
    return lines
