"""Market planner benchmark: 1,000 batteries over one 96-step day, 101 state-of-charge levels.

    .venv/bin/python bench/market.py [--batteries 1000] [--levels 101]

The day is fixtures/market/prices-2026-07-27-quarter-hourly.json (spot, 15-minute steps);
the batteries are drawn with a fixed seed: 50 kWh to 2 MWh, one to four hours of storage,
80 to 95 % round trip, any state of charge between 10 and 90 %. Prints the wall time for
all of them (target <= 5 s on this machine kind), per battery, and the profits' spread.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from pathlib import Path

from edge.codecs.redata import read_prices
from edge.market.plan import Battery, plan

DAY = Path(__file__).resolve().parent.parent / "fixtures" / "market" / "prices-2026-07-27-quarter-hourly.json"


def fleet(n: int, seed: int = 7) -> list[Battery]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        capacity = rnd.uniform(50, 2000)
        power = capacity / rnd.uniform(1, 4)
        out.append(Battery(capacity_kwh=capacity, charge_kw=power, discharge_kw=power,
                           efficiency=rnd.uniform(0.8, 0.95), soc_kwh=rnd.uniform(0.1, 0.9) * capacity,
                           soc_min_kwh=0.1 * capacity, soc_max_kwh=0.9 * capacity,
                           cost_eur_per_mwh=rnd.uniform(0, 30)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batteries", type=int, default=1000)
    parser.add_argument("--levels", type=int, default=101)
    args = parser.parse_args()
    prices = read_prices(DAY.read_bytes(), "spot")
    batteries = fleet(args.batteries)
    plan(prices, batteries[0], levels=args.levels)  # imports and first-call costs out of the timing
    start = time.perf_counter()
    profits = [plan(prices, b, levels=args.levels).profit_eur for b in batteries]
    elapsed = time.perf_counter() - start
    print(f"{len(batteries):,} batteries x {len(prices)} steps x {args.levels} levels: {elapsed:.2f} s "
          f"({elapsed / len(batteries) * 1000:.2f} ms per battery)   target <= 5 s for 1,000")
    print(f"profit per battery: median {statistics.median(profits):.2f} EUR, "
          f"min {min(profits):.2f}, max {max(profits):.2f}")


if __name__ == "__main__":
    main()
