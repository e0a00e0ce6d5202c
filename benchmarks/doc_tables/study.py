"""The equal-rate study's tables and words (issue 26) and its samples (issue 30); the studies around it: the
default model, level coding, the diagnosis, the ceiling, synthesis."""

from __future__ import annotations

import json
import math
import statistics
from typing import Any

from . import RENDERERS, RESULTS, number, renders, result, signed, table


# ---------------------------------------------------------------------------------------- the study

# the order of the rows; a study may hold fewer
FAMILIES = ("vanilla", "rvq", "rvq_lambda", "rvq_dropout", "fsq", "qmp", "qmp_lambda", "omp", "lasso")
STUDY_SETS = ("embedded", "cifar10")


def _study() -> dict[str, Any]:
    """The study (v4) as benchmarks/rate_distortion_study.py wrote it, finished or not (``--kept-only``)."""
    return result("rate_distortion_study")


def _v2() -> dict[str, Any]:
    """Study v2 (library 19db0d20f6f05d59; its embedded seed-0 models), kept for what its diagnosis found."""
    return result("rate_distortion_study_v2")


def _v1() -> dict[str, Any]:
    """Study v1 (vanilla, rvq, omp, lasso; library c32113ab4f938e55), kept for the verdict the README quotes."""
    return result("rate_distortion_study_v1")


def model_label(family: str, s: dict) -> str:
    """A study point's model in words. Results written before the renames spell rvq's stage count ``n_nonzero``."""
    if family == "vanilla":
        return f"{s['num_atoms']} entries"
    if family == "fsq":
        return f"grid of nominal size {s['num_atoms']}"
    if family == "rvq":
        stages = s.get("stages", s["n_nonzero"])
        return f"{stages} stage{'s' if stages > 1 else ''} x {s['num_atoms']}"
    if family == "rvq_lambda":
        return f"<= {s['stages']} stages x {s['num_atoms']}, quality {s['quality']}"
    if family == "rvq_dropout":
        return f"{s['stages']} stages x {s['num_atoms']}, stage dropout, quality {s['quality']}"
    if family == "qmp":
        return f"K={s['n_nonzero']}, N={s['num_atoms']}, {s['coef_levels']} values a rank"
    if family == "qmp_lambda":
        return f"K<={s['n_nonzero']}, N={s['num_atoms']}, {s['coef_levels']} values a rank, quality {s['quality']}"
    levels = f"{s['coef_levels']} {s['coef_quantizer']} levels"
    if family == "omp":
        return f"K={s['n_nonzero']}, N={s['num_atoms']}, {levels}"
    return f"alpha {s['alpha']}, <= {s['max_nonzero']} atoms, N={s['num_atoms']}, {levels}"


def model_of(point: dict) -> str:
    """The model a point was measured on (a rate-controlled model's qualities share one)."""
    return json.dumps({k: v for k, v in point["settings"].items() if k != "quality"}, sort_keys=True)


def _rows_of(study: dict, set_name: str) -> list[tuple[str, dict]]:
    """(family, point) of a set, family by family, seed by seed."""
    return [(family, p) for family in FAMILIES
            for p in sorted(study.get(set_name, {}).get(family, []), key=lambda p: p["settings"]["seed"])]


def _rate(bpp: float | None) -> str:
    return "-" if bpp is None else f"{bpp:.3f}"


def _study_points(set_name: str) -> str:
    rows = [[family, model_label(family, p["settings"]), str(p["settings"]["seed"]), _rate(p["bpp"]),
             _rate(p["payload_bpp"]), _rate(p["bpp_prior"]), f"{p['psnr']:.2f}", f"{p['ms_ssim']:.3f}"]
            for family, p in _rows_of(_study(), set_name)]
    if not rows:
        return "Not measured yet."
    return table(["family", "model", "seed", "bpp (file)", "payload bpp", "bpp with priors", "PSNR (dB)", "MS-SSIM"],
                 rows)


def _study_bd(set_name: str) -> str:
    """BD-rate and BD-PSNR against vanilla, rvq and rvq_lambda, one table a seed with points."""
    study = _study()
    seeds = sorted({p["settings"]["seed"] for _, p in _rows_of(study, set_name)})
    tables = []
    anchors = ("vanilla", "rvq", "rvq_lambda")
    for seed in seeds:
        bd = study["summary"]["bd_rate_by_seed"][set_name][str(seed)]
        rows = [[family, *(signed(bd[family].get(f"vs_{anchor}{suffix}"), **kw) for anchor in anchors
                           for suffix, kw in (("", {}), ("_prior", {}), ("_bd_psnr", {"digits": 2, "unit": " dB"})))]
                for family in FAMILIES if family in bd]
        header = [name for anchor in anchors for name in (f"vs {anchor}, BD-rate", "with priors", "BD-PSNR")]
        tables.append(f"Seed {seed}:\n\n" + table(["family", *header], rows))
    return "\n\n".join(tables) or "Not measured yet."


for _set in STUDY_SETS:
    RENDERERS[f"study_points_{_set}"] = (lambda s: lambda: _study_points(s))(_set)
    RENDERERS[f"study_bd_{_set}"] = (lambda s: lambda: _study_bd(s))(_set)


@renders("study_status")
def _study_status() -> str:
    """How complete the study is: per set and seed, the models measured and those still missing."""
    study = _study()
    summary = study["summary"]
    parts = []
    for set_name in STUDY_SETS:
        for seed in summary["seeds"]:
            measured = {model_of(p) for _, p in _rows_of(study, set_name) if p["settings"]["seed"] == seed}
            missing = _missing(study, set_name, seed)
            total = len(measured) + len(missing)
            if not missing:
                parts.append(f"{set_name} seed {seed}: all {total} models")
            elif not measured:
                parts.append(f"{set_name} seed {seed}: none of {total}")
            else:
                families = [m["family"] for m in missing]
                counts = ", ".join(f"{families.count(f)} {f}" for f in FAMILIES if f in families)
                parts.append(f"{set_name} seed {seed}: {len(measured)} of {total} (missing {counts})")
    state = "complete" if summary.get("complete", True) else "partial"
    return f"**{state}**, models measured: " + "; ".join(parts)


@renders("study_source")
def _study_source() -> str:
    summary = _study()["summary"]
    commit = summary.get("source_commit")
    hours = {}
    for set_name in STUDY_SETS:
        models: dict[str, float] = {}
        for _, p in _rows_of(_study(), set_name):  # a model's points carry its seconds so far: the last is its own
            models[model_of(p)] = max(models.get(model_of(p), 0.0), p["seconds"])
        if models:
            hours[set_name] = f"{sum(models.values()) / 3600:.1f} for the {len(models)} models of {set_name}"
    return (f"library source `{summary['source']}`" + (f" (as commit {commit[:7]} left it)" if commit else "")
            + "; CPU-hours (one thread a model, each model's training and measuring): "
            + (", ".join(hours.values()) or "none yet"))


@renders("study_budget")
def _study_budget() -> str:
    b = _study()["summary"]["budget"]
    return (f"{b['pretrain_steps']} pretraining steps, {number(b['steps'])} stage-1 steps, {b['prior_steps']} steps "
            f"a prior; {b['images']} held-out images a set coded with the factorised model, {b['prior_images']} of "
            f"them with the priors")


def _model_of(family: str, settings: dict) -> str:
    """A model in words, without the quality its points were coded at (its samples come from the model)."""
    return model_label(family, {**settings, "quality": "-"}).removesuffix(", quality -")


@renders("study_synthesis")
def _study_synthesis() -> str:
    """The CIFAR-10 models' samples at temperature 1 beside the bits of their codes under the priors that drew them."""
    synthesis = _study()["summary"].get("synthesis_cifar10")
    if not synthesis:
        return "Not measured yet: it comes with the CIFAR-10 models."
    rows = [[family, _model_of(family, r["settings"]), str(r["seed"]), _rate(r["bpp_prior"]),
             f"{r['fd']:.1f}", f"{r['precision']:.2f}", f"{r['recall']:.2f}", f"{r['fd_factorised']:.1f}",
             f"{r['fd_reconstruction']:.1f}"]
            for family in FAMILIES for r in synthesis.get(family, [])]
    return table(["family", "model", "seed", "bpp with priors", "FD, priors' samples", "precision", "recall",
                  "FD, factorised samples", "FD, reconstructions"], rows)


@renders("study_synthesis_verdict")
def _study_synthesis_verdict() -> str:
    """Issue 30's per-family verdict: each family's best samples against vanilla's best at no more bits."""
    study = _study()
    verdict = study["summary"].get("synthesis_at_equal_bits")
    if not verdict:
        return "Not measured yet: it comes with the CIFAR-10 models."
    rows = []
    for family in FAMILIES:
        for seed, v in sorted(verdict["families"].get(family, {}).items()):
            if _missing(study, "cifar10", int(seed)):
                continue
            best = v["best"]
            if best is None:
                rows.append([family, seed, "-", "-", "-", "-", "no vanilla model that cheap"])
                continue
            rows.append([family, seed, _model_of(family, best["settings"]),
                         _rate(best["bpp_prior"]), f"{best['fd']:.1f}", f"{best['vanilla_fd']:.1f}",
                         f"{best['margin']:+.1f}"])
    complete = _synthesis_complete_seeds(study)
    best = "; ".join(f"seed {seed}: {b['family']} ({b['margin']:+.1f})" for seed, b in complete.items())
    decided = all(b["at_most_vanilla"] for b in complete.values()) if complete else None
    met = {True: "**met**", False: "**not met**", None: "not decided"}[decided]
    return (table(["family", "seed", "its best model", "bpp with priors", "FD", "vanilla's best FD at no more bits",
                   "difference"], rows)
            + f"\n\nBest sparse family, FD against vanilla's: {best or 'none measured'}. Target (the best sparse "
            f"family's FD at equal bits <= vanilla's, every seed whose models are all in: {', '.join(complete)}): {met}.")


@renders("study_best_sparse")
def _study_best_sparse() -> str:
    """Issue 26's verdict per set and seed: the best sparse family's BD-rate (BD-PSNR) against each anchor."""
    study = _study()
    best = study["summary"].get("best_sparse", {})
    anchors = ("vanilla", "rvq", "fsq")
    rows = [[set_name, seed, b["family"],
             *(f"{signed(b['bd_rate'][a])} ({signed(b['bd_psnr'][a], 2, ' dB')})" for a in anchors),
             {True: "met", False: "not met", None: "undecided"}[b["target_met"]]]
            for set_name in STUDY_SETS for seed, b in sorted(best.get(set_name, {}).items())
            if b and not _missing(study, set_name, int(seed))]
    if not rows:
        return "Not measured yet."
    return table(["set", "seed", "best sparse family", *(f"vs {a}" for a in anchors), "target (<= -10% against each)"],
                 rows) + "\n\nA seed's row comes when all of that set's models of the seed are in."


def _missing(study: dict, set_name: str, seed: int) -> list[dict]:
    """The models of ``set_name`` and ``seed`` the study has not measured yet."""
    return [m for m in study["summary"].get("missing", []) if m["set"] == set_name and m["seed"] == seed]


SPARSE_NAMES = {"qmp": "quantised pursuit", "qmp_lambda": "rate-controlled quantised pursuit", "omp": "OMP",
                "lasso": "the LASSO"}


def _other_seeds(family: str, seeds: dict[str, tuple[str, dict]], notes: tuple[str, ...] = ()) -> str:
    """' (seed 0; seed 1: +x% / +y%)': the seeds after 0 beside seed 0's figure, each's best family named where it
    is not seed 0's ``family``, then ``notes``; ``seeds``: seed -> (its family, its BD-rates {"vanilla": ..,
    "rvq": ..})."""
    words = [f"seed {seed}: " + ("" if best == family else f"{SPARSE_NAMES[best]}, ")
             + f"{signed(bd['vanilla'])} / {signed(bd['rvq'])}" for seed, (best, bd) in sorted(seeds.items())
             if seed != "0"] + list(notes)
    return f" (seed 0; {'; '.join(words)})" if words else ""


def _best_sparse_words(set_name: str) -> str:
    """Seed 0's best sparse family on ``set_name`` against vanilla and rvq, in words; then every other seed whose
    models are all in, so the spread is read beside the figure."""
    study = _study()
    by_seed = study["summary"]["best_sparse"][set_name]
    first = by_seed["0"]
    others = {seed: (b["family"], b["bd_rate"]) for seed, b in by_seed.items()
              if not _missing(study, set_name, int(seed))}
    return (f"{SPARSE_NAMES[first['family']]}, {signed(first['bd_rate']['vanilla'])} against vanilla and "
            f"{signed(first['bd_rate']['rvq'])} against rvq" + _other_seeds(first["family"], others))


def _study_progress() -> str:
    """How far the study is: the seeds whose models are all in, set by set."""
    study = _study()
    seeds = study["summary"]["seeds"]
    done = {set_name: [s for s in seeds if not _missing(study, set_name, s)] for set_name in STUDY_SETS}
    if all(len(d) == len(seeds) for d in done.values()):
        return f"{len(seeds)} seeds of both sets"
    return "under way: " + ", ".join(f"{set_name} seed{'s' if len(d) > 1 else ''} {' and '.join(map(str, d))}"
                                     if d else f"{set_name} none" for set_name, d in done.items()) + " complete"


def _doubling_words(check: dict | None = None) -> str:
    """The doubling check's verdict on the sparse families, in words (the study's embedded check by default)."""
    check = check or _study()["summary"].get("doubling_check", {}).get("embedded")
    if check is None:
        return "not yet run"
    return {True: "no sparse family's verdict against vanilla or rvq flips",
            False: "a sparse family's verdict against vanilla or rvq flips",
            None: "no sparse family has a verdict at both budgets"}[check["sparse_unchanged"]]


def _level_coding_words(set_name: str) -> str:
    """Seed 0's best sparse family of ``set_name`` re-coded with its levels given their atoms, in words; then every
    other seed's, or that its best family was not re-coded."""
    study = _study()
    best = study["summary"]["best_sparse"][set_name]
    coded = result("level_coding")["sets"][set_name]["bd_rate"]
    given = {seed: (best[seed]["family"], {a: family[best[seed]["family"]]["given_atom"][f"vs_{a}"]
                                           for a in ("vanilla", "rvq")})
             for seed, family in coded.items() if seed in best and best[seed]["family"] in family}
    first, bd = given["0"]
    not_coded = tuple(f"seed {seed}'s best family, {SPARSE_NAMES[b['family']]}, not re-coded"
                      for seed, b in sorted(best.items())
                      if seed not in given and not _missing(study, set_name, int(seed)))
    return (f"{SPARSE_NAMES[first]} {signed(bd['vanilla'])} against vanilla and {signed(bd['rvq'])} against rvq"
            + _other_seeds(first, given, not_coded))


@renders("study_one_model_curves")
def _study_one_model_curves() -> str:
    """Issue 26's one-model target: each rate-controlled model's span of rates within 0.3 dB of its per-rate family."""
    study = _study()
    curves = study["summary"].get("one_model_curves", {})
    rows = [[set_name, seed, curve, c["against"], f"{c['rate_span']:.1f}x",
             "none" if c["close_rate_span"] is None else f"{c['close_rate_span']:.1f}x",
             signed(c["bd_psnr"], 2, " dB"), "met" if c["span_at_least_3x"] else "not met"]
            for set_name in STUDY_SETS for seed, by_curve in sorted(curves.get(set_name, {}).items())
            if not _missing(study, set_name, int(seed)) for curve, c in by_curve.items()]
    if not rows:
        return "Not measured yet."
    return table(["set", "seed", "one model", "per-rate models", "its rates span", "span within 0.3 dB of them",
                  "BD-PSNR against them", "target (>= 3x)"], rows)


# what each study changed in its sparse families (the study's own words for its JSON's families)
_STUDY_CHANGES = (
    ("v1", "omp", "OMP: least-squares coefficients rounded afterwards to learned levels, one table for every slot"),
    ("v1", "lasso", "the LASSO, rounded the same way"),
    ("v2", "omp", "v1's four models again (the library's other changes between)"),
    ("v2", "qmp", "quantised pursuit: each (atom, signed level) pair chosen on the quantised residual, a level "
                  "table a rank, the dictionary loss on the quantised code"),
    ("v2", "qmp_lambda", "qmp with rate-distortion-optimised pair counts, one model for 10 qualities"),
    ("v4", "omp", "as v2"),
    ("v4", "qmp", "v2's qmp at a held latent energy, with reseeded levels and maps, ranked codes"),
    ("v4", "qmp_lambda", "the same, each quality with its own frequency tables, priors over every quality"),
)


@renders("study_history")
def _study_history() -> str:
    """Each study's sparse families against vanilla and rvq (seed 0): BD-rate, and BD-PSNR, which compares across
    studies better (each study's curves overlap over other ranges)."""
    studies = {"v1": _v1(), "v2": _v2(), "v4": _study()}
    rows = []
    for version, family, change in _STUDY_CHANGES:
        cells = []
        for set_name in STUDY_SETS:
            bd = studies[version]["summary"]["bd_rate"].get(set_name, {}).get(family, {})
            for anchor in ("vanilla", "rvq"):
                cells.append(f"{signed(bd.get(f'vs_{anchor}'))} / {signed(bd.get(f'vs_{anchor}_bd_psnr'), 2, ' dB')}")
        rows.append([version, family, change, *cells])
    return table(["study", "family", "what it changed", "embedded vs vanilla", "embedded vs rvq", "CIFAR-10 vs vanilla",
                  "CIFAR-10 vs rvq"], rows)


@renders("default_model")
def _default_model() -> str:
    """benchmarks/default_model.py: the candidates for `make run`'s default on validation crops, and the rule's pick."""
    r = result("default_model")
    rows = [[f"{row['settings']['selection_fn']}, {model_label(row['settings']['selection_fn'], row['settings'])}"
             + (" (the default when measured)" if name == r["params_default"] else ""), f"{row['bpp']:.3f}",
             f"{row['psnr']:.2f}", f"{row['ms_ssim']:.3f}", "**chosen**" if name == r["chosen"] else ""]
            for name, row in r["candidates"].items()]
    v = r["validation"]
    return (table(["candidate", "bpp (files)", "PSNR (dB)", "MS-SSIM", "rule"], rows)
            + f"\n\n{v['crops']} validation crops of `{v['photograph']}` (a training photograph; the models trained on "
            f"the other photographs' {v['training_crops']} crops), {r['budget']['steps']} stage-1 steps, seed 0, "
            f"library `{r['source']}`. Rule: the best PSNR at no more than vanilla's bits + {r['rate_slack']:.0%}.")


def _default_model_words() -> str:
    """The default when measured, named, against vanilla and the log-rate line from vanilla to rvq's two stages (a
    rerun made with vanilla as the default says so rather than compare vanilla with itself)."""
    r = result("default_model")
    rows = {row["settings"]["selection_fn"]: row for row in r["candidates"].values()}
    ours, vanilla, rvq = r["candidates"][r["params_default"]], rows["vanilla"], rows["rvq"]
    settings = ours["settings"]
    name = f"{settings['selection_fn']}, {model_label(settings['selection_fn'], settings)}"
    if ours is vanilla:
        return f"{name}, the default when measured, is vanilla itself"
    share = math.log(ours["bpp"] / vanilla["bpp"]) / math.log(rvq["bpp"] / vanilla["bpp"])
    line = vanilla["psnr"] + share * (rvq["psnr"] - vanilla["psnr"])
    return (f"{name}, the default when measured, codes {signed(100 * (ours['bpp'] / vanilla['bpp'] - 1))} bits against "
            f"vanilla for {signed(ours['psnr'] - vanilla['psnr'], 2, ' dB')}, "
            f"{signed(ours['psnr'] - line, 2, ' dB')} from the log-rate line between vanilla and rvq's two stages")


RENDERERS["default_model_words"] = _default_model_words


@renders("level_coding")
def _level_coding() -> str:
    """The study's sparse models re-coded with a level table a slot and atom (benchmarks/level_coding.py): each
    family's BD-rate against the anchors before and after, and the bits each model's files saved."""
    coded = result("level_coding")
    rows, saved = [], []
    for set_name in STUDY_SETS:
        entry = coded["sets"].get(set_name)
        if entry is None:
            continue
        for seed, by_family in sorted(entry["bd_rate"].items()):
            for family, bd in by_family.items():
                rows.append([set_name, seed, family, *(
                    f"{signed(bd['one_table_a_slot'].get(f'vs_{a}'))} -> {signed(bd['given_atom'].get(f'vs_{a}'))}"
                    for a in ("vanilla", "rvq", "fsq"))])
        saved += [m["one_table_a_slot"]["bpp"] - m["given_atom"]["bpp"] for ms in entry["models"].values() for m in ms]
    if not rows:
        return "Not measured yet."
    return (table(["set", "seed", "family", "BD-rate vs vanilla, one table a slot -> given the atom", "vs rvq",
                   "vs fsq"], rows)
            + f"\n\n{len(saved)} models (study library `{coded['study_source']}`, its held-out images); a model's files"
            f" {min(saved):.3f}-{max(saved):.3f} bpp smaller, the same PSNR (the codes are unchanged).")


@renders("study_doubling")
def _study_doubling() -> str:
    """Every family against vanilla and rvq at the study's budget and at twice its stage-1 steps, where run."""
    study = _study()
    check = study["summary"].get("doubling_check", {}).get("embedded")
    if check is None:
        return "Not yet run for this study (`--doubling-check`)."
    steps = study["summary"]["budget"]["steps"]
    rows = []
    for name, c in sorted(check["comparisons"].items()):
        anchor = name.split(" vs ")[1]
        verdicts = " / ".join({True: "better", False: "worse", None: "-"}[v] for v in c["better"])
        rates = " / ".join(signed(bd.get(f"vs_{anchor}")) for bd in c["bd"])
        psnrs = " / ".join(signed(bd.get(f"vs_{anchor}_bd_psnr"), 2, " dB") for bd in c["bd"])
        rows.append([f"**{name}**" if name in check["flipped"] else name, verdicts, rates, psnrs])
    flipped = ", ".join(check["flipped"]) or "none"
    flips = (f"{_doubling_words(check)}; {len(check['flipped'])} comparisons flip (in bold: {flipped}), "
             f"{len(check['undetermined'])} have no verdict at one budget (a curve whose frontier is one point, or no "
             "common range)")
    if check["missing"]:
        flips += f"; partial: {len(check['missing'])} models not measured at {number(2 * steps)} steps yet"
    return f"{flips}:\n\n" + table(["comparison (embedded)", f"verdict at {number(steps)} / {number(2 * steps)} steps",
                                    "BD-rate, factorised", "BD-PSNR"], rows)


def _psnr_by_model(family: str, set_name: str = "embedded", seed: int = 0, study: dict | None = None) -> str:
    """A family's PSNR model by model, in words: 'K=1 26.59, K=2 26.75 dB'."""
    points = [p for f, p in _rows_of(study or _study(), set_name) if f == family and p["settings"]["seed"] == seed]
    words = {"qmp": lambda s: f"K={s['n_nonzero']}", "omp": lambda s: f"K={s['n_nonzero']} ({s['num_atoms']} atoms)",
             "rvq": lambda s: f"{s['stages']} stage{'s' if s['stages'] > 1 else ''}"}
    return ", ".join(f"{words[family](p['settings'])} {p['psnr']:.2f}" for p in points) + " dB"


def _point(family: str, **settings: Any) -> str:
    """The embedded seed-0 point of ``family`` with ``settings``: '2.620 bpp, 26.75 dB'."""
    p = next(p for f, p in _rows_of(_study(), "embedded") if f == family and p["settings"]["seed"] == 0
             and all(p["settings"][k] == v for k, v in settings.items()))
    return f"{p['bpp']:.3f} bpp, {p['psnr']:.2f} dB"


def _bd_seed0(family: str, key: str, set_name: str = "embedded", study: dict | None = None) -> float | None:
    return (study or _study())["summary"]["bd_rate_by_seed"][set_name]["0"].get(family, {}).get(key)


def _v1_bd(set_name: str, family: str) -> dict:
    return _v1()["summary"]["bd_rate"][set_name][family]


def _v1_lasso_rates() -> str:
    rates = [p["bpp"] for set_name in STUDY_SETS for p in _v1()[set_name]["lasso"]]
    return f"{min(rates):.1f}-{max(rates):.1f} bpp"


def _synthesis_complete_seeds(study: dict) -> dict[str, dict]:
    """Issue 30's best sparse family a seed, for the seeds whose CIFAR-10 models are all in (a partial seed's vanilla
    would judge with fewer models)."""
    by_seed = study["summary"]["synthesis_at_equal_bits"]["best_sparse"]
    return {seed: b for seed, b in sorted(by_seed.items()) if not _missing(study, "cifar10", int(seed))}


def _synthesis_seeds() -> str:
    """Every complete seed's best sparse samples against vanilla's at equal bits, in words, and the target's verdict."""
    by_seed = _synthesis_complete_seeds(_study())
    if not by_seed:
        return "not measured yet"
    side = {True: "below", False: "above"}
    words = [f"seed {seed}: {SPARSE_NAMES[b['family']]}, "
             + ("level with vanilla's best" if b["margin"] == 0 else
                f"FD {abs(b['margin']):.1f} {side[b['margin'] < 0]} vanilla's best") for seed, b in by_seed.items()]
    every = all(b["at_most_vanilla"] for b in by_seed.values())
    return "; ".join(words) + f" (at most vanilla's FD on every seed: {'yes' if every else 'no'})"


def _synthesis_seed_spread() -> str:
    """How far one model's samples move between seeds 0 and 1 (FD), in words: the yardstick for a family's margin.
    A model the study lists under two families (vanilla's 256 entries are rvq's one stage) counts once."""
    by_model: dict[tuple, tuple[str, str, dict[int, float]]] = {}
    for family, rows in _study()["summary"]["synthesis_cifar10"].items():
        seeds_of: dict[str, dict[int, dict]] = {}  # a model of the family -> its row a seed
        for r in rows:
            seeds_of.setdefault(_model_of(family, r["settings"]), {})[r["seed"]] = r
        for model, by_seed in seeds_of.items():
            if {0, 1} <= set(by_seed):
                same = tuple((by_seed[s]["fd"], by_seed[s]["bpp_prior"]) for s in (0, 1))
                by_model.setdefault(same, (family, model, {s: by_seed[s]["fd"] for s in (0, 1)}))
    if not by_model:
        return "not measured yet (no model with both seeds)"
    moves = sorted((abs(fds[1] - fds[0]), family, model, fds) for family, model, fds in by_model.values())
    largest, family, model, fds = moves[-1]
    return (f"up to {largest:.1f} ({family} {model}: {fds[0]:.1f} with seed 0, {fds[1]:.1f} with seed 1), "
            f"{statistics.median(m[0] for m in moves):.1f} at the median of the {len(moves)} models trained with both")


RENDERERS.update({
    "study_qmp_psnr_by_k": lambda: _psnr_by_model("qmp"),
    "study_rvq_psnr_by_stages": lambda: _psnr_by_model("rvq"),
    "study_omp_psnr_by_k": lambda: _psnr_by_model("omp"),
    "study_qmp_lambda_top": lambda: _point("qmp_lambda", quality=10),
    "study_qmp_lambda_bottom": lambda: _point("qmp_lambda", quality=1),
    "study_omp_k1": lambda: _point("omp", n_nonzero=1, num_atoms=256),
    "study_vanilla_256": lambda: _point("vanilla", num_atoms=256),
    "study_qmp_k1": lambda: _point("qmp", n_nonzero=1),
    "study_synthesis_seed_spread": _synthesis_seed_spread,
    "study_best_sparse_embedded": lambda: _best_sparse_words("embedded"),
    "study_best_sparse_cifar10": lambda: _best_sparse_words("cifar10"),
    "study_progress": _study_progress,
    "study_doubling_words": _doubling_words,
    "level_coding_best_cifar10": lambda: _level_coding_words("cifar10"),
    "study_synthesis_seeds": _synthesis_seeds,
    **{f"study_{family}_vs_{anchor}{suffix}": (lambda f, a, s: lambda: signed(_bd_seed0(f, f"vs_{a}", s)))(
           family, anchor, set_name)
       for family, anchor, set_name, suffix in (
           ("rvq", "vanilla", "embedded", ""), ("rvq", "vanilla", "cifar10", "_cifar10"),
           ("fsq", "vanilla", "embedded", ""), ("qmp", "vanilla", "embedded", ""), ("qmp", "rvq", "embedded", ""),
           ("qmp", "vanilla", "cifar10", "_cifar10"), ("qmp", "rvq", "cifar10", "_cifar10"),
           ("qmp_lambda", "rvq_lambda", "embedded", ""), ("qmp_lambda", "rvq_lambda", "cifar10", "_cifar10"),
           ("omp", "vanilla", "embedded", ""), ("omp", "rvq", "embedded", ""),
           ("omp", "vanilla", "cifar10", "_cifar10"), ("omp", "rvq", "cifar10", "_cifar10"))},
    # study v2 (its embedded seed-0 models: what the diagnosis below read)
    "study_v2_qmp_psnr_by_k": lambda: _psnr_by_model("qmp", study=_v2()),
    "study_v2_qmp_vs_vanilla": lambda: signed(_bd_seed0("qmp", "vs_vanilla", study=_v2())),
    "study_v2_qmp_vs_rvq": lambda: signed(_bd_seed0("qmp", "vs_rvq", study=_v2())),
    # study v1 (the first one the README quotes, under its name of the time)
    "study_omp_vs_vanilla_embedded": lambda: signed(_v1_bd("embedded", "omp")["vs_vanilla"]),
    "study_v1_omp_vs_rvq_embedded": lambda: signed(_v1_bd("embedded", "omp")["vs_rvq"]),
    "study_v1_omp_vs_rvq_cifar10": lambda: signed(_v1_bd("cifar10", "omp")["vs_rvq"]),
    "study_v1_lasso_rates": _v1_lasso_rates,
})



@renders("study_diagnosis")
def _study_diagnosis() -> str:
    """benchmarks/sparse_diagnosis.py: per cached model, the decoder given the unquantised latent against the code,
    the latents' size, the pairs coded, and the payload under the study's coder against a rank-ordered one."""
    r = result("sparse_diagnosis")
    rows = []
    for m in r["models"]:
        if m["family"] not in ("rvq", "qmp", "qmp_lambda"):
            continue
        d, maps = m["decoder"], m["latents"]
        rows.append([m["label"], f"{d['psnr_unquantised_colour']:.2f}", f"{d['psnr_quantised_colour']:.2f}",
                     " / ".join(f"{latent['energy']:,.3g}" for latent in maps),
                     " / ".join(f"{latent['pairs_per_position']:.2f}" for latent in maps),
                     f"{m['bits']['study_coder_payload_bpp']:.3f}", f"{m['bits']['rank_ordered_payload_bpp']:.3f}"])
    return (f"{r['set']} set, {r['images']:,} held-out crops, seed 0, the study's cached models "
            f"({m['steps']} steps); qmp_lambda at lambda 0 (its other qualities below):\n\n"
            + table(["model", "PSNR, unquantised latent (dB)", "PSNR, the code (dB)", "latent energy E[z^2], top / bottom",
                     "pairs a position, top / bottom", "payload bpp, study's coder", "payload bpp, rank order"],
                    rows)
            + "\n\n" + _qmp_lambda_qualities(r))


def _qmp_lambda_qualities(r: dict) -> str:
    """qmp_lambda's qualities coded with the study's tables (fitted to quality 10's codes) and with their own."""
    (m,) = [m for m in r["models"] if m["family"] == "qmp_lambda"]
    return table(["qmp_lambda quality", "lambda", "pairs a position, bottom", "PSNR (dB)",
                  "payload bpp, quality 10's tables", "payload bpp, its own tables"],
                 [[str(q["quality"]), f"{q['lambda']:.3g}", f"{q['pairs_per_position'][-1]:.2f}", f"{q['psnr_colour']:.2f}",
                   f"{q['study_coder_payload_bpp']:.3f}", f"{q['matched_coder_payload_bpp']:.3f}"]
                  for q in m["qualities"]])

@renders("qmp_ceiling")
def _qmp_ceiling() -> str:
    """benchmarks/qmp_ceiling.py: variants of qmp K=2 and the rvq reference on a validation split, at the study's
    budget (qmp_ceiling.json) and at four times its stage-1 steps where measured (qmp_ceiling_2400.json)."""
    runs = [result("qmp_ceiling")]
    if (RESULTS / "qmp_ceiling_2400.json").is_file():
        runs.append(result("qmp_ceiling_2400"))
    rows = [[v["variant"], f"{r['budget']['steps']:,}", f"{v['psnr_codes']:.2f}", f"{v['psnr_unquantised']:.2f}",
             " / ".join(f"{x:.2f}" for x in v["participation_ratio_top_bottom"])]
            for r in runs for v in r["variants"]]
    return (f"{runs[0]['validation_images']:,} validation crops (held out of the embedded training crops), seed 0, "
            f"{runs[0]['budget']['pretrain_steps']} pretraining steps:\n\n"
            + table(["model", "stage-1 steps", "PSNR, the code (dB)", "PSNR, unquantised latent (dB)",
                     "latent effective dimension, top / bottom"], rows))



# ------------------------------------------------------------------------------------------------- synthesis

SYNTHESIS_SOURCES = ("real", "reconstruction", "factorised", "pixelsnail_t0.7", "pixelsnail_t0.85", "pixelsnail_t1")


@renders("synthesis")
def _synthesis() -> str:
    """Every measured source of each model of benchmarks/synthesis.py: FD, precision, recall, the codes' bits; a
    source every model shares (the same VQ-VAE's real images, reconstructions, factorised samples) once."""
    models = result("synthesis")["cifar10"]
    rows = []
    for source in SYNTHESIS_SOURCES:
        measured = {model: sources[source] for model, sources in models.items() if source in sources}
        shared = len({json.dumps(s, sort_keys=True) for s in measured.values()}) == 1 and len(measured) > 1
        for model, s in list(measured.items())[:1] if shared else measured.items():
            rows.append(["every model" if shared else f"`{model}`", source, f"{s['fd']:.1f}", f"{s['precision']:.3f}",
                         f"{s['recall']:.3f}", "-" if s["bpp"] is None else f"{s['bpp']:.3f}"])
    return table(["model", "source", "FD", "precision", "recall", "bpp of the codes"], rows)


@renders("synthesis_verdict")
def _synthesis_verdict() -> str:
    """Per model: its best PixelSNAIL source's FD against the factorised model's, and the 0.5x target."""
    r = result("synthesis")
    rows = [[f"`{model}`", v["best_source"], f"{v['fd']:.1f}", f"{v['factorised_fd']:.1f}", f"{v['ratio']:.2f}x",
             f"{v['reconstruction_fd']:.1f} ({v['reconstruction_ratio']:.2f}x)",
             f"{'met' if v['met'] else 'not met'} (<= {v['target']}x)"]
            for model, v in r["verdict"].items()]
    return (f"Judge: {r['judge_accuracy']:.1%} accuracy on held-out CIFAR-10 images.\n\n"
            + table(["model", "best PixelSNAIL source", "its FD", "factorised FD", "ratio",
                     "reconstructions' FD (the floor)", "target"], rows))
