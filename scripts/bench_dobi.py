"""DOBI search time: K candidates on an M-element tensor (exact sorted prefix-sum errors)
vs a brute-force pass per candidate → JSON + md.

    python scripts/bench_dobi.py --numel 1000000 --candidates 100 --bits 2 4 8
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from srq.quant.dobi import candidate_bounds, dobi_search
from srq.quant.primitives import fake_quantize
from srq.results import write_bench_report


def _median_time(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--numel", type=int, default=1_000_000)
    parser.add_argument("--candidates", type=int, default=100)
    parser.add_argument("--bits", type=int, nargs="+", default=[2, 4, 8])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench/dobi.json"))
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    v = torch.distributions.StudentT(3.0).sample((args.numel,))
    rows = []
    for bits in args.bits:
        ours = _median_time(lambda: dobi_search(v, bits, args.candidates), args.repeats)

        def brute():
            lo, hi = candidate_bounds(float(v.min()), float(v.max()), args.candidates)
            errs = [(v - fake_quantize(v, lo[i].float(), hi[i].float(), bits)).pow(2).sum()
                    for i in range(len(lo))]
            return torch.stack(errs).argmin()

        reference = _median_time(brute, max(1, args.repeats // 2))
        rows.append({"bits": bits, "numel": args.numel, "candidates": args.candidates,
                     "dobi_s": ours, "brute_force_s": reference, "speedup": reference / ours,
                     "threads": torch.get_num_threads()})
        print(f"{bits}-bit: DOBI {ours:.3f} s, brute force {reference:.3f} s")
    write_bench_report(args.out, {"rows": rows, "repeats": args.repeats},
                       ["bits", "elements", "candidates", "DOBI s", "brute force s", "speed-up"],
                       lambda r: [str(r["bits"]), str(r["numel"]), str(r["candidates"]),
                                  f"{r['dobi_s']:.3f}", f"{r['brute_force_s']:.3f}",
                                  f"{r['speedup']:.1f}×"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
