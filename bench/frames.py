"""Reading 16 frames from long high-resolution videos: peak resident memory and time, minivtp's reader against
decoding every frame and keeping them (what minivtp did before), each in a fresh process.

    python -m bench.frames                 # 30 s and 5 min of 1080p at 25 fps; ~4 minutes on 2 CPU cores
    python -m bench.frames --json          # the rows as one JSON object on stdout
    python -m bench.frames --out OUT       # and OUT/frames.json
    python -m bench.frames --tiny --out OUT    # a 2 s clip of 320 x 180: a smoke test, seconds

The clips are made here with PyAV (libx264, moving gradients, so the encoder has real work). The old way is only
run on the short clip: on the long one it would need 7,500 x 6.2 MB = 47 GB.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import common

# each reader in a fresh `python -c` started in the repository root, which puts minivtp first on its path
CHILD = """
import resource, time
t = time.perf_counter()
if {how!r} == "minivtp":
    from minivtp.hosts.frames import read_frames
    frames, _ = read_frames({path!r}, 16)
else:
    import av, torch
    from minivtp.hosts.frames import sample_indices
    with av.open({path!r}) as c:
        every = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    frames = [torch.from_numpy(every[i]) for i in sample_indices(len(every), 16)]
print(len(frames), time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
"""
BASELINE = "import resource; import torch, av, minivtp.hosts.llava; " \
           "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)"


def make_clip(path: Path, seconds: int, width=1920, height=1080, fps=25):
    import av
    import numpy as np
    y, x = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as out:
        s = out.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.options = {"preset": "ultrafast", "crf": "28"}
        for i in range(seconds * fps):
            img = np.stack([(x + 4 * i) % 256, (y + 2 * i) % 256, (x + y + i) % 256], -1).astype(np.uint8)
            for packet in s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in s.encode():
            out.mux(packet)


def run(code: str):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=common.ROOT)
    return out.stdout.split()


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seconds", type=int, nargs="+", default=[30, 300])
    p.add_argument("--old-up-to", type=int, default=30, help="run the decode-everything reader on clips this long")
    p.add_argument("--json", action="store_true")
    p.add_argument("--out", type=Path, default=None, help="also write OUT/frames.json")
    p.add_argument("--tiny", action="store_true", help="one 2 s clip of 320 x 180, both readers: a smoke test")
    args = p.parse_args(argv)
    try:
        import av  # noqa: F401
    except ImportError:
        common.skip("bench/frames.py", "it needs PyAV (pip install av)")
        return 0
    size = (320, 180) if args.tiny else (1920, 1080)
    if args.tiny:
        args.seconds, args.old_up_to = [2], 2
    base = int(run(BASELINE)[0])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seconds in args.seconds:
            clip = Path(tmp) / f"{seconds}s.mp4"
            t = time.perf_counter()
            make_clip(clip, seconds, *size)
            print(f"made {seconds} s of {size[1]}p ({clip.stat().st_size / 1e6:.0f} MB) in "
                  f"{time.perf_counter() - t:.0f} s",
                  file=sys.stderr, flush=True)
            for how in ("minivtp", "decode-everything"):
                if how != "minivtp" and seconds > args.old_up_to:
                    continue
                n, secs, rss = run(CHILD.format(how=how, path=str(clip)))
                rows.append(dict(seconds=seconds, frames=seconds * 25, height=size[1], reader=how, kept=int(n),
                                 read_s=float(secs),
                                 peak_rss_mb=int(rss) / 1e6, above_imports_mb=(int(rss) - base) / 1e6))
                print(rows[-1], file=sys.stderr, flush=True)
    res = dict(common.machine(), script="frames", tiny=args.tiny, baseline_rss_mb=base / 1e6, rows=rows)
    if args.out:
        print("wrote", common.write_json(args.out, "frames.json", res), file=sys.stderr)
    if args.json:
        print(json.dumps(res))
        return 0
    print(f"imports alone (torch, PyAV, minivtp): peak resident {base / 1e6:.0f} MB\n")
    print("| video | reader | time | peak resident memory | above the imports |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['seconds']} s {r['height']}p, {r['frames']} frames | {r['reader']} | {r['read_s']:.1f} s | "
              f"{r['peak_rss_mb']:.0f} MB | {r['above_imports_mb']:.0f} MB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
