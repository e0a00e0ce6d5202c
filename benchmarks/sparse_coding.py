"""Sparse-coding speed and accuracy against SPAMS and scikit-learn, measured in one run.

Data: a random unit-norm dictionary (d=64, N=512) and K-sparse combinations of its atoms plus
small noise (fixed seed). OMP rows: ``omp`` in its per-row form (``rows``, the CPU's default) and its
batched form with either way of getting the correlations (``gemm``, ``gram``: the GPU's). LASSO rows: the
exact homotopy (``lasso``; on the CPU also its batched form), FISTA with its exact active-set finish, and
plain FISTA (100 iterations). Ours takes and returns float32 on the chosen device (the per-row forms
compute in float64 inside); SPAMS works in float64 with all threads; scikit-learn with one job. Prints a
table and writes JSON (see --output).

    python benchmarks/sparse_coding.py            # full size: 65,536 signals
    python benchmarks/sparse_coding.py --quick    # 8,192 signals, for a smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from _results import RESULTS, write_json

from sparse_vqvae.sparse_coding import fista, lasso, omp, random_dictionary

DIM, NUM_ATOMS, NOISE, ALPHA, SEED = 64, 512, 0.01, 0.1, 0
OMP_KS = (3, 5, 8)
LASSO_K = 5  # sparsity of the signals the LASSO rows code


def sparse_signals(k: int, count: int, dictionary: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    support = torch.rand(count, NUM_ATOMS, generator=g).argsort(dim=1)[:, :k]
    codes = torch.zeros(count, NUM_ATOMS).scatter_(1, support, torch.randn(count, k, generator=g))
    return codes @ dictionary.t() + NOISE * torch.randn(count, DIM, generator=g)


def timed(fn, *args, repeat: int = 1, **kwargs):
    """Best-of-`repeat` wall time after one warm-up call on a small slice."""
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return result, best


def matmul_peak_flops(device: torch.device) -> float:
    a = torch.randn(2048, 2048, device=device)
    a @ a
    _, seconds = timed(lambda: [a @ a for _ in range(5)], repeat=3)
    return 5 * 2 * 2048**3 / seconds


def relative_error(x: np.ndarray, codes: np.ndarray, dictionary: np.ndarray) -> float:
    residual = x - codes @ dictionary.T
    return float(np.median(np.linalg.norm(residual, axis=1) / np.maximum(np.linalg.norm(x, axis=1), 1e-12)))


def lasso_objective(x: np.ndarray, codes: np.ndarray, dictionary: np.ndarray) -> np.ndarray:
    return 0.5 * ((x - codes @ dictionary.T) ** 2).sum(axis=1) + ALPHA * np.abs(codes).sum(axis=1)


def supports(codes: np.ndarray) -> np.ndarray:
    return codes != 0


def run(count: int, device: torch.device, with_references: bool) -> dict:
    if with_references:  # benchmark-only extras (pip install .[bench]); a GPU machine may lack them
        import spams
        from sklearn.decomposition import sparse_encode

    dictionary = random_dictionary(DIM, NUM_ATOMS, generator=torch.Generator().manual_seed(SEED))
    d64 = np.asfortranarray(dictionary.numpy().astype(np.float64))
    peak = matmul_peak_flops(device)
    rows = []
    on_cpu = device.type == "cpu"
    omp_variants = ([("rows", dict(form="rows"))] if on_cpu else []) + [
        ("gemm", dict(form="batched", correlations="gemm")), ("gram", dict(form="batched", correlations="gram"))]

    for k in OMP_KS:
        x = sparse_signals(k, count, dictionary, SEED + k)
        x_dev, d_dev = x.to(device), dictionary.to(device)
        omp(x_dev[:1024], d_dev, k)  # warm-up
        sk_codes = spams_codes = None
        if with_references:
            sk_codes, sk_time = timed(sparse_encode, x.numpy().astype(np.float64), d64.T, algorithm="omp", n_nonzero_coefs=k)
            x_f = np.asfortranarray(x.numpy().T.astype(np.float64))
            spams_codes, spams_time = timed(spams.omp, x_f, d64, L=k, numThreads=-1)
            spams_codes = spams_codes.toarray().T
        for mode, kwargs in omp_variants:
            code, seconds = timed(omp, x_dev, d_dev, k, repeat=3, **kwargs)
            dense = code.to_dense(NUM_ATOMS).cpu().double().numpy()
            row = {
                "method": "omp", "k": k, "variant": mode, "signals_per_s": count / seconds,
                "gflops_share_of_matmul_peak": (count * 2 * DIM * NUM_ATOMS * k / seconds) / peak,
                "relative_error": relative_error(x.double().numpy(), dense, d64),
            }
            if with_references:
                row["support_agreement_sklearn"] = float((supports(dense) == supports(sk_codes)).all(axis=1).mean())
                row["speed_ratio_vs_spams"] = spams_time / seconds
                row["speed_ratio_vs_sklearn"] = sk_time / seconds
            rows.append(row)
        if with_references:
            rows.append({"method": "omp", "k": k, "variant": "spams", "signals_per_s": count / spams_time,
                         "relative_error": relative_error(x.double().numpy(), spams_codes, d64),
                         "support_agreement_sklearn": float((supports(spams_codes) == supports(sk_codes)).all(axis=1).mean())})
            rows.append({"method": "omp", "k": k, "variant": "sklearn", "signals_per_s": count / sk_time,
                         "relative_error": relative_error(x.double().numpy(), sk_codes, d64)})

    x = sparse_signals(LASSO_K, count, dictionary, SEED + 100)
    x64 = x.double().numpy()
    x_dev, d_dev = x.to(device), dictionary.to(device)
    if with_references:
        exact, spams_time = timed(spams.lasso, np.asfortranarray(x64.T), D=d64, lambda1=ALPHA, mode=2, numThreads=-1)
        exact = exact.toarray().T
        f_exact = lasso_objective(x64, exact, d64)
        cd_count = min(count, 8192)  # lasso_cd at ~2.6k signals/s: time a slice, report the rate
        cd_codes, cd_time = timed(sparse_encode, x64[:cd_count], d64.T, algorithm="lasso_cd", alpha=ALPHA, n_jobs=1)
        cd_rate = cd_count / cd_time
    solvers = (("homotopy", lasso, {}), *([("homotopy-batched", lasso, dict(form="batched"))] if on_cpu else []),
               ("fista+exact", fista, dict(exact=True)), ("fista-100", fista, dict(exact=False, n_iter=100)))
    for variant, solver, kwargs in solvers:
        solver(x_dev[:1024], d_dev, ALPHA, **kwargs)
        code, seconds = timed(solver, x_dev, d_dev, ALPHA, **kwargs)
        dense = code.cpu().double().numpy()
        row = {"method": "lasso", "k": LASSO_K, "variant": variant, "signals_per_s": count / seconds,
               "relative_error": relative_error(x64, dense, d64),
               "mean_nonzeros": float((dense != 0).sum(axis=1).mean())}
        if with_references:
            gap = (lasso_objective(x64, dense, d64) - f_exact) / f_exact
            row["objective_gap_vs_spams_median"] = float(np.median(gap))
            row["objective_gap_vs_spams_p99"] = float(np.quantile(gap, 0.99))
            row["speed_ratio_vs_spams"] = spams_time / seconds
            row["speed_ratio_vs_sklearn_lasso_cd"] = (count / seconds) / cd_rate
        rows.append(row)
    if with_references:
        rows.append({"method": "lasso", "k": LASSO_K, "variant": "spams-lars", "signals_per_s": count / spams_time,
                     "relative_error": relative_error(x64, exact, d64)})
        gap_cd = (lasso_objective(x64[:cd_count], cd_codes, d64) - f_exact[:cd_count]) / f_exact[:cd_count]
        rows.append({"method": "lasso", "k": LASSO_K, "variant": "sklearn-lasso_cd", "signals_per_s": cd_rate,
                     "relative_error": relative_error(x64[:cd_count], cd_codes, d64),
                     "objective_gap_vs_spams_median": float(np.median(gap_cd))})
    return {"rows": rows, "matmul_peak_gflops": peak / 1e9}


def print_table(rows: list[dict]) -> None:
    columns = ["method", "k", "variant", "signals_per_s", "speed_ratio_vs_spams", "speed_ratio_vs_sklearn",
               "speed_ratio_vs_sklearn_lasso_cd", "support_agreement_sklearn", "relative_error",
               "objective_gap_vs_spams_median", "gflops_share_of_matmul_peak"]
    short = ["method", "K", "variant", "signals/s", "x SPAMS", "x sk-omp", "x sk-cd", "supp=sk", "rel err",
             "gap SPAMS", "% peak"]

    def cell(row, key):
        value = row.get(key)
        if value is None:
            return "-"
        if key == "signals_per_s":
            return f"{value:,.0f}"
        if key == "gflops_share_of_matmul_peak":
            return f"{100 * value:.1f}%"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    table = [short] + [[cell(r, c) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for i, line in enumerate(table):
        print("  ".join(v.rjust(w) for v, w in zip(line, widths)))
        if i == 0:
            print("  ".join("-" * w for w in widths))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="8,192 signals instead of 65,536")
    parser.add_argument("--signals", type=int, default=None, help="number of signals (overrides --quick)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads on CPU")
    parser.add_argument("--no-references", action="store_true", help="skip SPAMS and scikit-learn")
    parser.add_argument("--output", type=Path, default=RESULTS / "sparse_coding.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    count = args.signals or (8192 if args.quick else 65536)
    device = torch.device(args.device)
    result = run(count, device, with_references=not args.no_references)
    result.update({
        "signals": count, "dim": DIM, "num_atoms": NUM_ATOMS, "noise": NOISE, "alpha": ALPHA, "seed": SEED,
        "device": str(device), "dtype": "float32", "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "machine": platform.processor() or platform.machine(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None, "torch": torch.__version__,
    })
    print(f"{count:,} signals, d={DIM}, N={NUM_ATOMS}, device={device}, torch threads={torch.get_num_threads()}, "
          f"matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s")
    print_table(result["rows"])
    write_json(args.output, result)


if __name__ == "__main__":
    main()
