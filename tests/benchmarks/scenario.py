"""Scenario generator benchmark: how long ``generate_scenario`` plus ``build_state`` take for
a large world (the benchmarks and the large-vault tests build one before they start).

    python -m tests.benchmarks.scenario --vaults 200 --backups-per-vault 1000

prints the figures and, as its last line, one JSON object. Nothing here is asserted: the
suite checks what the generator builds (tests/emulator/test_emulator_scenario.py), not how
fast, since a busy machine is slower by a factor no threshold can know.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from daemon.emulator.scenario import build_state, generate_scenario


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vaults", type=int, default=200)
    parser.add_argument("--backups-per-vault", type=int, default=1000)
    parser.add_argument("--eligible-fraction", type=float, default=0.5)
    args = parser.parse_args(argv)
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    scenario = generate_scenario(args.vaults, args.backups_per_vault, args.eligible_fraction)
    generated_wall = time.perf_counter() - started_wall
    state = build_state(scenario)
    result = {
        "vaults": args.vaults,
        "backups": len(state["backups"]),
        "generate_s": round(generated_wall, 3),
        "build_state_s": round(time.perf_counter() - started_wall - generated_wall, 3),
        "wall_s": round(time.perf_counter() - started_wall, 3),
        "cpu_s": round(time.process_time() - started_cpu, 3),
    }
    print(
        f"{result['backups']:,} backups in {result['vaults']} vaults: generated in "
        f"{result['generate_s']} s, state built in {result['build_state_s']} s "
        f"({result['cpu_s']} s CPU)"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
