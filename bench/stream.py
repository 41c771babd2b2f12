"""Streaming throughput: images per second that DataLoader workers read, decode and resize.

    python bench/stream.py --data PATH [--image-size 224] [--workers 0 1 2] [--images 2000]
                           [--repeats 3] [--json FILE]

Streams the first --images training files of PATH (an image folder or archive, as `blitz train
--max-memory 0` would) in batches of 256, once untimed (the OS file cache is then warm: this
measures decoding, not the disk), then --repeats times for each worker count, the counts
interleaved so that a machine's drift hits them alike. Prints images/s, median (min-max).
Use it to choose --workers: a GPU step consumes images faster than one CPU core decodes photos.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

import torch
from summary import markdown_table, spread, write_json

from blitz.config.data_settings import DataConfig
from blitz.data.sources import load_data


def images_per_second(split, rows: torch.Tensor) -> float:
    started = time.perf_counter()
    split.images_at(rows)
    return len(rows) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--data", required=True, help="an image folder or an archive of one")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the measurements to this file")
    args = parser.parse_args()

    cfg = DataConfig(source=args.data, image_size=args.image_size, max_memory="0")
    split = load_data(cfg).train
    rows = torch.arange(min(args.images, len(split)))
    images_per_second(split, rows)  # warm the file cache
    rates = {w: [] for w in args.workers}
    for _ in range(args.repeats):
        for workers in args.workers:
            rates[workers].append(images_per_second(replace(split, workers=workers), rows))
    print(f"machine: {os.cpu_count()} CPU cores; {len(rows)} images of {args.data}")
    print(f"decoded and resized to {args.image_size}x{args.image_size}")
    per_process = {w: statistics.median(r) / max(w, 1) for w, r in rates.items()}
    rows_out = [[w, spread(r, "images/s"), f"{per_process[w]:.0f}"] for w, r in rates.items()]
    header = ["workers (0: in-process)", "images/s, median (min-max)", "per process"]
    print(markdown_table(header, rows_out))
    write_json(args.json, {str(w): r for w, r in rates.items()})


if __name__ == "__main__":
    main()
