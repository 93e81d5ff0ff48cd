"""How many rows screened sampling recomputes (screen_kernel in csrc/cuda/gemv_bf16.cu), in float64 NumPy: the
int8 copy (a scale per 64 columns of a row), x quantised per 32 columns (one mma step), the per-row bound of
gemv_bf16.cu's screen_kernel comment, and the rows whose upper bound reaches the best lower bound, greedy and at
temperature 1, for Gaussian weights and an input whose top logit stands `--margins` standard deviations above the
largest of the rest (a trained model's confident step); `--outliers` makes 4 weight columns 8× and 1 % of x's
channels 50× larger. Also checks that every bound holds.

    python benchmarks/screen_bound_sim.py [--vocab 8000] [--hidden 2880] [--margins 0 1 4] [--outliers]
"""

from __future__ import annotations

import argparse

import numpy as np


def bf16(a: np.ndarray) -> np.ndarray:
    bits = np.asarray(a, np.float32).view(np.uint32)
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16 << 16).astype(np.uint32).view(np.float32)


def quantise(v: np.ndarray, block: int) -> np.ndarray:
    """v [..., n] to int8 with a scale per `block` columns (max |v| / 127), dequantised in float64."""
    blocks = v.reshape(*v.shape[:-1], -1, block).astype(np.float64)
    scale = np.abs(blocks).max(-1, keepdims=True) / 127
    q = np.clip(np.rint(blocks / np.where(scale > 0, scale, 1)), -127, 127)
    return (scale * q).reshape(v.shape)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--vocab", type=int, default=8000)
    parser.add_argument("--hidden", type=int, default=2880)
    parser.add_argument("--margins", type=float, nargs="+", default=[0.0, 1.0, 4.0])
    parser.add_argument("--outliers", action="store_true")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    V, H, u = args.vocab, args.hidden, 2.0**-24
    w = rng.standard_normal((V, H)) * 0.02
    if args.outliers:
        w[:, :4] *= 8
    w = bf16(w)
    w_hat = quantise(w, 64)
    wn = np.sqrt((w.astype(np.float64) ** 2).sum(1))
    dn = np.sqrt(((w - w_hat) ** 2).sum(1))
    c = 3 * (H // 64) + 2
    for margin in args.margins:
        x = rng.standard_normal(H)
        if args.outliers:
            x *= np.where(rng.random(H) < 0.01, 50.0, 1.0)
        x += (
            (4.5 + margin) * w[0] / wn[0] * np.sqrt(np.mean(x**2))
        )  # row 0 ~margin σ above the rest's largest
        xs = bf16(x / np.sqrt(np.mean(x**2)) * rng.uniform(0.5, 2.0, H)).astype(np.float64)
        x_hat = quantise(xs, 32)
        exact = w.astype(np.float64) @ xs
        a = w_hat @ x_hat
        xh = np.sqrt((x_hat**2).sum())
        e1 = np.sqrt(((xs - x_hat) ** 2).sum()) + H * u * np.sqrt((xs**2).sum()) + c * u * xh
        b = wn * e1 + dn * (1 + c * u) * xh
        assert np.all(np.abs(exact - a) <= b), "a bound does not hold"
        greedy = np.count_nonzero(a + b >= (a - b).max())
        g = -np.log(-np.log(rng.random(V)))
        sampled = np.count_nonzero(a + b + g >= (a - b + g).max())
        top = np.sort(exact)[-2:]
        print(
            f"margin {margin:>3.0f} σ: logit σ {exact.std():.2f}, top − next {top[1] - top[0]:.2f}, mean bound "
            f"{b.mean():.2f} (largest error {np.abs(exact - a).max():.3f}); rows recomputed: greedy {greedy} / {V}, "
            f"T=1 {sampled} / {V}"
        )


if __name__ == "__main__":
    main()
