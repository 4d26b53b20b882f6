"""proxytasks against face_recognition (dlib's own pipeline), on a synthetic episode of real faces.

Target (issue 6): proxy training started from dlib's face ResNet (`proxy_dlib`) names at
least as well as face_recognition at 5 shots. Runs `proxytasks benchmark --backbone
dlib_resnet29` (every peer) and prints one JSON line per metric for `pretrained` (frozen
dlib features through the toolkit's clustering and naming) and `proxy_dlib`, the peer
being face_recognition measured in the same run on the same draws.

    python bench/face_peers.py [--identities 10] [--shots 20] [--time-budget 120]
"""
from __future__ import annotations

from common import emit, orl_episode_benchmark


def main() -> None:
    m = orl_episode_benchmark(__doc__, "bench_peers_", backbone="dlib_resnet29",
                              peers=("face_recognition", "proxy_dlib"))
    peer = m["methods"]["face_recognition"]
    for name in ("pretrained", "proxy_dlib"):
        method = m["methods"][name]
        for metric, value, base in (("naming_1shot", method["naming"]["1"], peer["naming"]["1"]),
                                    ("naming_5shot", method["naming"]["5"], peer["naming"]["5"]),
                                    ("bcubed_f1", method["clustering"]["bcubed_f1"], peer["clustering"]["bcubed_f1"])):
            emit("face_peers", f"{name}_{metric}", value, "fraction", "face_recognition, same run", base,
                 value / base if base else None, ">= face_recognition", value >= base)


if __name__ == "__main__":
    main()
