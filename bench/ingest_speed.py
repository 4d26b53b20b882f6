"""Ingest speed on the Hamilton clip beside the detector's bare speed on the same frames.

`ingest` decodes, detects, measures shots, writes frames and crops; the peer is the
detector alone on the same frames already decoded in memory (same batch size).
Target (issue 4): report both; ingest should stay close to the bare detector (ratio near 1).

    python bench/ingest_speed.py [--stride 1]
"""
from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from common import SHARED_DATA, emit


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from proxytasks.detect import create_detector
    from proxytasks.ingest import ingest_media
    from proxytasks.media import iter_video

    video = SHARED_DATA / "face_recognition_examples" / "examples" / "short_hamilton_clip.mp4"
    if not video.is_file():
        raise SystemExit(f"needs {video} (see shared/data/README.md)")
    frames = [f.image for f in iter_video(video, stride=args.stride)]
    detector = create_detector("mtcnn")
    detector.detect(frames[:2])  # warm-up
    start = time.perf_counter()
    for s in range(0, len(frames), args.batch_size):
        detector.detect(frames[s:s + args.batch_size])
    bare = len(frames) / (time.perf_counter() - start)
    out = Path(tempfile.mkdtemp(prefix="bench_ingest_"))
    start = time.perf_counter()
    report = ingest_media([video], out / "m.jsonl", detector, stride=args.stride, batch_size=args.batch_size,
                          progress=False, resume=False)
    full = report.frames / (time.perf_counter() - start)
    emit("ingest_speed", "frames_per_second", round(full, 2), "frames/s", "bare MTCNN on decoded frames",
         round(bare, 2), round(full / bare, 3), "report ingest beside the bare detector (ratio near 1)",
         full / bare >= 0.8)


if __name__ == "__main__":
    main()
