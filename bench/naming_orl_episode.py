"""Proxy training vs the bare pretrained backbone, on a synthetic episode of real ORL faces.

Targets: proxy beats pretrained on naming accuracy at 1 and 5 shots and on BCubed F1,
trained with rule pairs only (issue 3); the best suggestion strategy reaches 90% naming
accuracy with fewer typed names than random choice (issue 5). Runs `proxytasks
benchmark --active` and prints one JSON line per metric, the peer (the pretrained
backbone; random choice) measured in the same run.

    python bench/naming_orl_episode.py [--identities 10] [--shots 20] [--time-budget 120]
"""
from __future__ import annotations

from common import emit, orl_episode_benchmark


def main() -> None:
    from proxytasks.active import SUGGESTION_STRATEGIES, names_to_reach

    m = orl_episode_benchmark(__doc__, "bench_orl_", active=tuple(SUGGESTION_STRATEGIES.names()), peers=())
    pre, proxy = m["methods"]["pretrained"], m["methods"]["proxy"]
    rows = [("naming_1shot", proxy["naming"]["1"], pre["naming"]["1"]),
            ("naming_5shot", proxy["naming"]["5"], pre["naming"]["5"]),
            ("bcubed_f1", proxy["clustering"]["bcubed_f1"], pre["clustering"]["bcubed_f1"])]
    for metric, value, peer in rows:
        emit("naming_orl_episode", metric, value, "fraction", "pretrained backbone, same run", peer,
             value / peer if peer else None, "proxy > pretrained", value > peer)
    reach = {name: names_to_reach(curve) for name, curve in m["active"].items()}
    random_n = reach.pop("random")
    for name, n in reach.items():
        ratio = random_n / n if n and random_n else None
        emit("naming_orl_episode", f"names_to_90pct_{name}", n, "names typed", "random choice, same run",
             random_n, ratio, "best strategy < random", ratio is not None and ratio > 1)


if __name__ == "__main__":
    main()
