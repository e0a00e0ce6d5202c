"""The photo codec's tables: its curves and targets against JPEG and WebP, the zoo, what caps it, the prior's
window."""

from __future__ import annotations

from typing import Callable

from . import RENDERERS, met, renders, result, signed, table


# ------------------------------------------------------------------------------------------ photo codec

def _photo_set(name: str) -> dict:
    return result("photo_codec")["sets"][name]


def _previous_curve(name: str = "photos") -> list[dict]:
    """The previous model's points on set ``name``, where the run kept its curve (``--previous``); else none."""
    return result("photo_codec").get("previous", {}).get("sets", {}).get(name, {}).get("ours", [])


def _refined(name: str = "photos") -> dict:
    """The refined curve of set ``name`` (``--effort``): its effort, points, speed, summary and targets; else {}."""
    return _photo_set(name).get("refined", {})


@renders("photo_codec")
def _photo_codec() -> str:
    """The shipped model's curve, its refined curve (``--effort``) and the previous model's (``--previous``) beside
    it where the run measured them."""
    run, s, refined = result("photo_codec"), _photo_set("photos"), _refined()
    beside = [({p["setting"]: p for p in curve}, column) for curve, column in (
        (refined.get("points", []), f"effort {refined.get('effort')}: bpp / PSNR"),
        (_previous_curve(), "the previous model: bpp / PSNR")) if curve]

    def points_beside(setting: int) -> list[str]:
        """Each curve beside this one at this quality."""
        return [f"{points[setting]['bpp']:.3f} / {points[setting]['psnr']:.2f}" if setting in points else ""
                for points, _ in beside]

    rows = [[str(p["setting"]), f"{p['bpp']:.3f}", f"{p['psnr']:.2f}", f"{p['ms_ssim']:.3f}",
             " / ".join(f"{c:.2f}" for c in p["colour_error_mean"]), *points_beside(p["setting"])] for p in s["ours"]]
    prior = s["prior"]
    rows.append([f"{prior['setting']}, prior-coded", f"{prior['bpp']:.3f}", f"{prior['psnr']:.2f}",
                 f"{prior['ms_ssim']:.3f}", "(the same image)", *[""] * len(beside)])  # curves only beside
    columns = ["quality", "bpp", "PSNR (dB)", "MS-SSIM", "colour error (levels, R / G / B)",
               *(column for _, column in beside)]
    caption = (f"{len(s['images'])} held-out photographs at full size ({s['megapixels_mean']:.2f} MP on average), "
               "real file sizes")
    if refined:
        caption += (f"; effort {refined['effort']}: each code refined by {refined['effort']} steps at encode time "
                    f"(`--effort`), BD-rate {signed(refined['summary']['bd_rate_psnr_vs_unrefined'])} against the "
                    f"unrefined codes by PSNR (BD-PSNR {refined['summary']['bd_psnr_vs_unrefined']:+.2f} dB)")
    if _previous_curve():
        b = s["summary"]
        caption += (f"; the previous model (`{run['previous']['fingerprint'][:8]}`) measured alike, "
                    f"against which this one's BD-rate is {signed(b['bd_rate_psnr_vs_previous'])} by PSNR "
                    f"(BD-PSNR {b['bd_psnr_vs_previous']:+.2f} dB)")
    return caption + ":\n\n" + table(columns, rows)


@renders("photo_codec_references")
def _photo_codec_references() -> str:
    s = _photo_set("photos")
    rows = [[codec, str(p["setting"]), f"{p['bpp']:.3f}", f"{p['psnr']:.2f}", f"{p['ms_ssim']:.3f}"]
            for codec in ("jpeg", "webp") for p in s[codec]]
    return table(["codec", "quality", "bpp", "PSNR (dB)", "MS-SSIM"], [[c.upper() if c == "jpeg" else "WebP", *rest]
                                                                      for c, *rest in rows])


def _prior_s_per_mp(prior: dict) -> str:
    """Prior-coded seconds a megapixel, encode / decode."""
    return f"{1 / prior['encode_mp_s']:.1f} / {1 / prior['decode_mp_s']:.1f}"


@renders("photo_codec_summary")
def _photo_codec_summary() -> str:
    rows = []
    for name, v in result("photo_codec")["sets"].items():
        for label, b, speed, rest in (
                (f"{name} ({len(v['images'])}, {v['megapixels_mean']:.2f} MP)", v["summary"], v["speed"],
                 [f"{v['jpeg_speed']['encode_mp_s']:.0f} / {v['jpeg_speed']['decode_mp_s']:.0f}",
                  _prior_s_per_mp(v["prior"])]),
                *(((f"{name}, effort {r['effort']}", r["summary"], r["speed"], ["", ""]),) if (r := _refined(name))
                  else ())):
            rows.append([label, signed(b["bd_rate_psnr_vs_jpeg"]), signed(b["bd_rate_ms_ssim_vs_jpeg"]),
                         signed(b["bd_rate_psnr_vs_webp"]), signed(b["bd_rate_ms_ssim_vs_webp"]),
                         f"{speed['encode_mp_s']:.2f} / {speed['decode_mp_s']:.2f}", *rest])
    return table(["held-out set (photographs, MP)", "BD-rate vs JPEG, PSNR", "vs JPEG, MS-SSIM", "vs WebP, PSNR",
                  "vs WebP, MS-SSIM", "encode / decode MP/s", "JPEG MP/s", "prior-coded s/MP"], rows)


_PHOTO_TARGETS = {  # key: what it is, how its figure reads, its unit
    "top_psnr": ("the top quality's PSNR", "{:.2f}", " dB"),
    "smallest_step_db": ("the smallest step between qualities", "{:.2f}", " dB"),
    "bd_rate_vs_jpeg_26_33": ("BD-rate vs JPEG over its 26-33 dB", "{:+.1f}", "%"),
    "bd_psnr_vs_jpeg": ("BD-PSNR vs JPEG", "{:+.2f}", " dB"),
    "bd_rate_vs_webp": ("BD-rate vs WebP", "{:+.1f}", "%"),
}


@renders("photo_codec_targets")
def _photo_codec_targets() -> str:
    """The photo codec's targets (issue 27), set by set: figure, target, verdict (benchmarks/photo_codec.py)."""
    rows = []
    measured = [(name, v.get("targets", {})) for name, v in result("photo_codec")["sets"].items()]
    measured += [(f"{name}, effort {r['effort']}", r["targets"]) for name in result("photo_codec")["sets"]
                 if (r := _refined(name))]
    for name, targets in measured:
        reached = targets.get("bd_rate_vs_jpeg_psnr_range")
        for key, (what, form, unit) in _PHOTO_TARGETS.items():
            if key not in targets:
                continue
            t = targets[key]
            if key == "bd_rate_vs_jpeg_26_33" and reached:
                what = f"BD-rate vs JPEG over {reached[0]:.1f}-{reached[1]:.1f} dB (of 26-33)"
            rows.append([name, what, "undefined" if t["figure"] is None else form.format(t["figure"]) + unit,
                         f"{t['target']}{unit}", "undefined" if t["met"] is None else met(t["met"])])
    if not rows:
        return "Not measured yet: the targets come with the next run of `benchmarks/photo_codec.py`."
    return table(["held-out set", "measure", "figure", "target", "verdict"], rows)


@renders("zoo")
def _zoo() -> str:
    r = result("photo_codec")
    s = _photo_set("photos")
    low, high = s["ours"][0], s["ours"][-1]
    b = s["summary"]
    return table(
        ["name", "trained on", "quantizer", "qualities", "bpp", "PSNR (dB)", "BD-rate vs JPEG (PSNR / MS-SSIM)"],
        [[f"`{r['model']}` (default)", "photographs (`make photo-model`)", "rvq, one map, stage dropout",
          f"{r['qualities'][0]}-{r['qualities'][-1]}", f"{low['bpp']:.2f}-{high['bpp']:.2f}",
          f"{low['psnr']:.1f}-{high['psnr']:.1f}",
          f"{signed(b['bd_rate_psnr_vs_jpeg'])} / {signed(b['bd_rate_ms_ssim_vs_jpeg'])}"]])


def _fig(path: Callable[[], float], fmt: Callable[[float], str]) -> Callable[[], str]:
    return lambda: fmt(path())


for _name, _path, _fmt in [
    ("photo_bd_ms_ssim_vs_jpeg", lambda: _photo_set("photos")["summary"]["bd_rate_ms_ssim_vs_jpeg"], signed),
    ("photo_bd_psnr_vs_jpeg", lambda: _photo_set("photos")["summary"]["bd_rate_psnr_vs_jpeg"], signed),
    ("photo_bd_ms_ssim_vs_webp", lambda: _photo_set("photos")["summary"]["bd_rate_ms_ssim_vs_webp"], signed),
    ("photo_bd_psnr_vs_webp", lambda: _photo_set("photos")["summary"]["bd_rate_psnr_vs_webp"], signed),
    ("photo_images", lambda: len(_photo_set("photos")["images"]), str),
    ("photo_saturation_db", lambda: _photo_set("photos")["ours"][-1]["psnr"], lambda x: f"{x:.1f} dB"),
    ("photo_prior_s_per_mp", lambda: _photo_set("photos")["prior"], lambda p: f"{_prior_s_per_mp(p)} s/MP"),
    ("photo_bd_psnr_vs_previous", lambda: _photo_set("photos")["summary"]["bd_rate_psnr_vs_previous"], signed),
    ("photo_bd_psnr_db_vs_previous", lambda: _photo_set("photos")["summary"]["bd_psnr_vs_previous"],
     lambda x: f"{x:+.2f} dB"),
    ("photo_previous_top_db", lambda: _previous_curve()[-1]["psnr"], lambda x: f"{x:.2f} dB"),
    ("photo_jpeg_encode_mp_s", lambda: _photo_set("photos")["jpeg_speed"]["encode_mp_s"], lambda x: f"{x:.0f} MP/s"),
    ("photo_factorised_encode_mp_s", lambda: _photo_set("photos")["speed"]["encode_mp_s"], lambda x: f"{x:.2f} MP/s"),
    ("photo_refined_effort", lambda: _refined()["effort"], str),
    ("photo_refined_top_db", lambda: _refined()["points"][-1]["psnr"], lambda x: f"{x:.2f} dB"),
    ("photo_refined_bd_vs_unrefined", lambda: _refined()["summary"]["bd_rate_psnr_vs_unrefined"], signed),
    ("photo_refined_bd_psnr_db_vs_unrefined", lambda: _refined()["summary"]["bd_psnr_vs_unrefined"],
     lambda x: f"{x:+.2f} dB"),
    ("photo_refined_bd_psnr_vs_jpeg", lambda: _refined()["summary"]["bd_rate_psnr_vs_jpeg"], signed),
    ("photo_refined_bd_psnr_db_vs_jpeg", lambda: _refined()["summary"]["bd_psnr_vs_jpeg"], lambda x: f"{x:+.2f} dB"),
    ("photo_bd_psnr_db_vs_jpeg", lambda: _photo_set("photos")["summary"]["bd_psnr_vs_jpeg"], lambda x: f"{x:+.2f} dB"),
    ("photo_refined_bd_ms_ssim_vs_unrefined", lambda: _refined()["summary"]["bd_rate_ms_ssim_vs_unrefined"], signed),
    ("photo_refined_bd_psnr_vs_webp", lambda: _refined()["summary"]["bd_rate_psnr_vs_webp"], signed),
    ("photo_refined_encode_s_per_mp", lambda: 1 / _refined()["speed"]["encode_mp_s"], lambda x: f"{x:.0f} s/MP"),
]:
    RENDERERS[_name] = _fig(_path, _fmt)


def _gain_words(after: list[dict], before: list[dict]) -> str:
    """Curve ``after``'s PSNR against ``before``'s at quality 1, the middle one and the top, in words."""
    ours = {p["setting"]: p["psnr"] for p in after}
    earlier = {p["setting"]: p["psnr"] for p in before}
    qualities = sorted(ours)
    shown = [qualities[0], qualities[len(qualities) // 2 - 1], qualities[-1]]
    return ", ".join(f"{ours[q] - earlier[q]:+.2f} dB at quality {q}" for q in shown)


@renders("photo_gain_vs_previous")
def _photo_gain_vs_previous() -> str:
    """The shipped model's PSNR against the previous model's."""
    return _gain_words(_photo_set("photos")["ours"], _previous_curve())


@renders("photo_refined_gain")
def _photo_refined_gain() -> str:
    """The refined curve's PSNR against the unrefined codes'."""
    return _gain_words(_refined()["points"], _photo_set("photos")["ours"])


# ----------------------------------------------------------------------------------- what caps the photo codec

def _cap() -> dict:
    return result("photo_cap")


def _by_number(values: dict[str, float]) -> dict[str, float]:
    """A JSON object keyed by numbers (written with sorted keys: "100" before "25"), in numeric order."""
    return dict(sorted(values.items(), key=lambda item: float(item[0])))


@renders("photo_cap")
def _photo_cap() -> str:
    r = _cap()
    h = r["held_out"]
    rows = [["unquantised", f"{h['unquantised']['psnr_with_offsets']:.2f}", "", "0", "", "", "", "", ""]]
    for q in h["qualities"]:
        c = q["codebook"]
        rows.append([str(q["quality"]), f"{q['psnr_with_offsets']:.2f}",
                     "" if q["quality"] == 1 else f"{q['gain_db']:+.2f}", f"{100 * q['latent_error']:.2f}%",
                     f"{100 * q['latent_error_removed']:.2f}%", f"{q['psnr_vs_unquantised_output']:.1f}",
                     f"{c['used']:,} / {c['dead_held_out']:,} / {c['dead_training']:,}", f"{c['perplexity']:.0f}",
                     f"{c['entry_norm_used_mean']:.2f} / {c['residual_norm_mean']:.2f}"])
    entries = h["qualities"][0]["codebook"]["used"] + h["qualities"][0]["codebook"]["dead_held_out"]
    return (f"Zoo model `{r['model']}` on {len(h['images'])} held-out photographs at full size "
            f"({h['megapixels_mean']:.2f} MP on average); quality q decodes the first q stages; PSNR with the "
            f"files' colour offsets (the codec's own output, before rounding to 8 bits); the latent error is "
            f"||z - z_q||^2 / ||z||^2; each stage has {entries:,} entries:\n\n"
            + table(["quality", "PSNR (dB)", "gain (dB)", "latent error left", "removed by this stage",
                     "PSNR against the unquantised output (dB)", "entries used / never used here / dead in training",
                     "perplexity", "entry norm / residual norm"], rows))


@renders("photo_cap_findings")
def _photo_cap_findings() -> str:
    r = _cap()
    h, crops, dropout = r["held_out"], r["crops"], r["stage_dropout"]
    top = h["qualities"][-1]
    latent = h["latent"]
    pcs = _by_number(crops["psnr_by_principal_components"])
    energy = latent["components_for_energy"]
    bias = h["colour_bias_levels_mean"]
    rows = [
        ["unquantised autoencoder (no quantiser)", f"{h['unquantised']['psnr_with_offsets']:.2f} dB held out "
         f"({h['unquantised']['psnr']:.2f} without offsets); {r['training_photos']['unquantised_psnr']:.2f} dB "
         f"(without offsets) on {len(r['training_photos']['images'])} training photographs"],
        [f"all {len(h['qualities'])} stages (the top quality)", f"{top['psnr_with_offsets']:.2f} dB: "
         f"{h['unquantised']['psnr_with_offsets'] - top['psnr_with_offsets']:.2f} dB under the unquantised "
         f"autoencoder; its latent error {100 * top['latent_error']:.2f}%"],
        ["the decoder's mean colour", "off by " + " / ".join(f"{b:+.1f}" for b in bias) + " levels (R / G / B, "
         f"mean of the photographs); the files' colour offsets add "
         f"{top['psnr_with_offsets'] - top['psnr']:.2f} dB at the top quality"],
        ["the latent", f"{latent['channels']} channels a /{latent['stride']} position "
         f"({latent['pixel_values_per_position']} pixel values); "
         f"{energy['0.9']} / {energy['0.99']} / {energy['0.999']} principal components carry 90 / 99 / 99.9% "
         "of its variance"],
        [f"the decoder given the first k principal components ({crops['images']} centre crops of "
         f"{crops['crop']}x{crops['crop']})", ", ".join(f"k={k}: {v:.2f} dB" for k, v in pcs.items())],
    ]
    if "optimised" in crops:
        o = crops["optimised"]
        curve = _by_number(o["psnr_by_step"])
        rows.append([f"the decoder given latents optimised for each crop (Adam on the pixel error, {o['steps']} "
                     "steps)", " -> ".join(f"{v:.2f}" for v in curve.values()) + f" dB at steps {', '.join(curve)}; "
                     f"cut to the encoder's first {o['first_components']} components {o['psnr_first_components']:.2f} "
                     f"dB; moved by {100 * o['latent_change']:.0f}% of the latent's norm; quantised by every stage: "
                     f"{o['encoder_top_quality_psnr']:.2f} (the encoder's) -> {o['optimised_top_quality_psnr']:.2f} dB "
                     f"(latent error {100 * o['encoder_latent_error']:.2f}% -> "
                     f"{100 * o['optimised_latent_error']:.1f}%)"])
    weighted = (f"`stage_dropout_top_share` {dropout['top_share_setting']}: " if dropout.get("top_share_setting")
                else "")
    rows.append(["stage dropout", f"the top quality is {100 * dropout['top_quality_share_of_images']:.0f}% of the "
                 f"training images ({weighted}{dropout['crops_with_every_stage']:,} of the last run's "
                 f"{dropout['steps']:,} x {dropout['batch_size']} crops) and "
                 f"{100 * dropout['top_quality_share_of_objective']:.1f}% of the objective; the card's test split: "
                 f"{dropout['card_test_split_top_psnr']:.2f} dB"])
    return (f"Zoo model `{r['model']}`, {len(h['images'])} held-out photographs at full size; the decoder's "
            "experiments on their centre crops:\n\n" + table(["what", "measured"], rows))


@renders("photo_cap_spectrum")
def _photo_cap_spectrum() -> str:
    s = _cap()["held_out"]["spectrum"]
    top = str(len(_cap()["held_out"]["qualities"]))
    edges = s["band_edges_cycles_per_pixel"]
    lowpass = list(_by_number(s["lowpass_psnr"]).values()) + [None]
    rows = [[f"{lo:.3g} - {hi:.3g}", f"{100 * s['image_energy_share'][i]:.2f}%",
             f"{100 * s['error_share']['1'][i]:.1f}%", f"{100 * s['error_share'][top][i]:.1f}%",
             f"{s['error_over_image'][top][i]:.3f}", "" if lowpass[i] is None else f"{lowpass[i]:.2f}"]
            for i, (lo, hi) in enumerate(zip(edges, edges[1:]))]
    return table(["band (cycles a pixel)", "the photographs' energy", "the error's, q1", f"the error's, q{top}",
                  f"error / energy, q{top}", "ideal low-pass to the band's upper edge (dB)"], rows)


@renders("prior_window")
def _prior_window() -> str:
    r = result("prior_window")
    rows = [["none (the factorised model)", f"{r['factorised_bpp']:.3f}", "", ""]]
    for rows_above, point in _by_number(r["by_rows"]).items():
        label = "every earlier position" if rows_above == "0" else f"its row and the {rows_above} above"
        rows.append([label, f"{point['bpp']:.3f}", f"{point['encode_s_per_mp']:.1f}", f"{point['decode_s_per_mp']:.1f}"])
    s = r["summary"]
    return (f"Zoo model `{r['model']}` (`{r['fingerprint'][:8]}`)'s codes, two priors trained alike "
            f"({r['steps']:,} steps of {r['recipe']['batch_size']} training tiles, seed {r['recipe']['seed']}) but for their attention; "
            f"{len(r['images'])} held-out photographs ({r['megapixels_mean']:.2f} MP on average) at quality "
            f"{r['quality']}, real files, {r['threads']} threads (both priors timed in one run):\n\n"
            + table(["the prior attends to", "bpp", "encode s/MP", "decode s/MP"], rows)
            + f"\n\nThe window: {signed(100 * s['bits_vs_full_attention'], 2)} bits, {s['speedup_encode']:.1f}x faster "
              f"to encode, {s['speedup_decode']:.1f}x to decode.")


def _db(x: float) -> str:
    return f"{x:.2f} dB"


for _name, _path, _fmt in [
    ("photo_cap_unquantised_db", lambda: _cap()["held_out"]["unquantised"]["psnr_with_offsets"], _db),
    ("photo_cap_top_db", lambda: _cap()["held_out"]["qualities"][-1]["psnr_with_offsets"], _db),
]:
    RENDERERS[_name] = _fig(_path, _fmt)
