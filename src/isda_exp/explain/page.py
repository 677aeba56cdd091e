"""explain.json (every number and index shown) and explain.md (a short page over the figures)."""
from __future__ import annotations

from pathlib import Path

from ..rundir.files import atomic_write, write_json

JSON, MARKDOWN = "explain.json", "explain.md"


def write(out: Path, result: dict, names: list[str]) -> None:
    write_json(out / JSON, result)
    text = "\n".join([_header(result), _directions(result, names), _neighbours(result, names),
                      _keep(result), _bound(result)]) + "\n"
    atomic_write(out / MARKDOWN, lambda fh: fh.write(text.encode("utf-8")))


def _header(r: dict) -> str:
    run, s = r["run"], r["settings"]
    lam = f"lambda_0 = {run['lambda_0']:g}" if run["isda_covariance"] else \
        f"no ISDA: lambda is shown relative to the paper's lambda_0 = {s['lambda_reference']:g}"
    return (f"# What ISDA augments: {run['dataset']}, {run['model']}, {run['method']}\n\n"
            f"Run `{run['path']}`, checkpoint `{run['checkpoint']}` after epoch {run['epoch']} "
            f"(`{run['checkpoint_id']}`); {run['train_size']} training and {run['test_size']} "
            f"{run['eval_split']} images; {lam}.\n\n"
            f"Covariance Sigma_c: **{r['covariance']['source']}**. Features: the penultimate "
            f"layer in eval mode on un-augmented images. Nearest images: {s['metric']} distance in "
            f"feature space over all {run['train_size']} training images. Indices are positions "
            "in the run's training / test set as isda_exp.training.build.build_data returns it. "
            f"Every number shown is in `{JSON}`. Took {r['timing']['total_s']:.0f} s on {s['device']}.\n")


def _directions(r: dict, names) -> str:
    lines = ["## Semantic directions", "", f"![directions]({r['figures']['directions']})", "",
             f"![spectrum]({r['figures']['spectrum']})", "",
             "| class | training images | top eigenvalues | variance in top 1 / 3 "
             "| directions for 50 / 90 / 99% |",
             "|---|---|---|---|---|"]
    for c in r["directions"]:
        s = c["spectrum"]
        cum = s["cumulative_fraction"]
        top = ", ".join(f"{v:.3g}" for v in s["eigenvalues"][:3])
        share = f"{100 * cum[0]:.0f}% / {100 * cum[min(2, len(cum) - 1)]:.0f}%" if cum else "-"
        lines.append(f"| {names[c['class']]} | {c['train_images']} | {top} | {share} | "
                     f"{s['directions_for_50pct']} / {s['directions_for_90pct']} / "
                     f"{s['directions_for_99pct']} |")
    against = r["covariance"].get("against_final_features")
    if against:
        lines += ["", "The checkpoint's Sigma_c is ISDA's running estimate over every training step; "
                  "against the same estimator on the final model's training features (eval mode):",
                  "", "| class | trace (checkpoint / final) | top direction, abs cos | top-3 overlap |",
                  "|---|---|---|---|"]
        lines += [f"| {names[a['class']]} | {a['trace']:.3g} / {a['trace_other']:.3g} | "
                  f"{a['top_cosine']:.2f} | {a['top3_overlap']:.2f} |" for a in against]
    return "\n".join(lines) + "\n"


def _neighbours(r: dict, names) -> str:
    lines = ["## Augmented neighbours", "", f"![neighbours]({r['figures']['neighbours']})", "",
             "| test image | label | prediction | lambda | draws keeping the label "
             "| labels of the nearest training images |",
             "|---|---|---|---|---|---|"]
    for q in r["neighbours"]:
        for a in q["augmented"]:
            kept = sum(p == q["label"] for p in a["prediction"])
            near = ", ".join(names[p] for p in a["nearest_labels"])
            lines.append(f"| {q['test_index']} | {names[q['label']]} | {names[q['prediction']]} | "
                         f"{a['lambda']:g} | {kept}/{len(a['prediction'])} | {near} |")
    return "\n".join(lines) + "\n"


def _keep(r: dict) -> str:
    lines = ["## Label-keep rate against lambda", "", f"![lambda]({r['figures']['lambda']})", "",
             f"Over {len(r['keep_rate_images'])} training images, {r['settings']['mc_draws']} "
             "draws each: how often the classifier's prediction on a~ is the label (and the "
             "prediction on a).", "",
             "| lambda | prediction = label | prediction = un-augmented prediction |", "|---|---|---|"]
    for k in r["keep_rate"]:
        lines.append(f"| {k['lambda']:g} | {100 * k['keep_label']:.2f}% | "
                     f"{100 * k['keep_prediction']:.2f}% |")
    return "\n".join(lines) + "\n"


def _bound(r: dict) -> str:
    lines = ["## Expected cross-entropy against ISDA's bound (Eq. 4)", "",
             f"{len(r['bound_images'])} training features; Monte Carlo over "
             f"{r['settings']['mc_draws']} draws each (+- one standard error); the bound by "
             "ISDALoss.augmented_logits. The bound must lie above the expectation (Jensen).", "",
             "| lambda | Monte Carlo E[CE] | bound (Eq. 4) | bound - E[CE] |", "|---|---|---|---|"]
    for b in r["bound"]:
        lines.append(f"| {b['lambda']:g} | {b['mc_expected_ce']:.4f} +- {b['mc_standard_error']:.4f} "
                     f"| {b['bound_eq4']:.4f} | {b['gap']:.4f} |")
    return "\n".join(lines) + "\n"
