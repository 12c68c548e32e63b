"""The test suite under mutation: mutmut breaks the method's code one small change at a time (a `<` for a `<=`, a
`+ 1`, an argument dropped, ...) and runs the fast tests on each broken copy. A mutant the tests pass "survived":
either a test is missing or the change means nothing (an equivalent mutant). Each survivor deserves one or the other.

    pip install -e ".[mutation]"
    python tools/mutate.py                    # the method (vtp.py), generate.py (pick among it), rms_norm
    python tools/mutate.py --jobs 2 'minivtp.vtp.*'    # only some mutants (mutmut's names, fnmatch patterns)
    python tools/mutate.py --dir /tmp/m --keep         # then: cd /tmp/m && mutmut show <name>

What it mutates, and why only that:
- minivtp/vtp.py, all of it: the paper's Eq. 4-8.
- minivtp/generate.py, all of it: Method, choose, prefill, decode_one_token, pick, generate. (The GPU machinery,
  CUDA graphs and compiled steps, lives in minivtp/fast/__init__.py and is left out: it runs only on a GPU or under
  torch.compile, which the fast subset leaves out, so its mutants would survive for want of a GPU.)
- minivtp/model.py's rms_norm and RMSNorm: the norm the numerics rule is about.

How: the tracked tree is copied to a scratch directory (the working tree is never touched, and a run can be
stopped at any time). mutmut 3 does not mutate decorated functions, and prefill, decode_one_token and generate
carry @torch.no_grad(); in the copy those decorators are removed and gradients switched off for the whole test
session instead (tests/conftest.py of the copy), which is what the decorator does for these tests. Then
`mutmut run` with the [tool.mutmut] section of pyproject.toml: the fast tests (no torch.compile), each mutant
run only against the tests that call the function it changed, stopping at the first failure.

Prints every survivor with its diff, and a count of killed, survived, timed out and untested mutants.
"""

import argparse
import fnmatch
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# mutmut names a function's mutants module.x_function__mutmut_N and a method's module.xǁClassǁmethod__mutmut_N
TARGETS = [
    "minivtp.vtp.*",
    "minivtp.generate.*",
    "minivtp.model.x_rms_norm__*", "minivtp.model.xǁRMSNormǁ*",
]
NO_GRAD = re.compile(r"^\s*@torch\.no_grad\(\)\s*\n", re.M)


def scratch_copy(dest: Path):
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split("\n")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for name in ("minivtp/generate.py", "minivtp/vtp.py", "minivtp/model.py"):
        path = dest / name
        path.write_text(NO_GRAD.sub("", path.read_text()))
    with open(dest / "tests" / "conftest.py", "a") as f:
        f.write("\n\n# tools/mutate.py: the @torch.no_grad() decorators are gone from this copy (mutmut skips decorated\n"
                "# functions); no gradients for the whole session instead\ntorch.set_grad_enabled(False)\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("patterns", nargs="*", default=TARGETS, help="mutant name patterns (default: the targets)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count(), help="mutants tested at once (default: cores)")
    parser.add_argument("--dir", type=Path, help="scratch directory (default: a new temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch directory (mutmut show, mutmut apply)")
    args = parser.parse_args()
    try:
        import mutmut  # noqa: F401
    except ImportError:
        sys.exit("tools/mutate.py needs mutmut: pip install -e \".[mutation]\"")
    dest = args.dir or Path(tempfile.mkdtemp(prefix="minivtp-mutate-"))
    if args.dir and dest.exists() and any(dest.iterdir()):
        sys.exit(f"--dir {dest} is not empty: give a new or empty directory")
    dest.mkdir(parents=True, exist_ok=True)
    scratch_copy(dest)
    print(f"scratch copy: {dest}", flush=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "mutmut"]
    run = subprocess.run(cmd + ["run", "--max-children", str(args.jobs), *args.patterns], cwd=dest, env=env)
    seconds = time.perf_counter() - t
    results = subprocess.run(cmd + ["results", "--all", "true"], cwd=dest, env=env, capture_output=True,
                             text=True).stdout
    rows = [line.strip().rsplit(": ", 1) for line in results.splitlines() if ": " in line]
    chosen = [(name, status) for name, status in rows
              if any(fnmatch.fnmatch(name, p) for p in args.patterns)]
    counts = {}
    for _, status in chosen:
        counts[status] = counts.get(status, 0) + 1
    survivors = [name for name, status in chosen if status == "survived"]
    for name in survivors:
        diff = subprocess.run(cmd + ["show", name], cwd=dest, env=env, capture_output=True, text=True).stdout
        print(f"\n---- survived: {name}\n{diff.strip()}")
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
    print(f"\n{len(chosen)} mutants: {summary}; {seconds:.0f} s with {args.jobs} at once")
    if not args.keep and not args.dir:
        shutil.rmtree(dest, ignore_errors=True)
    sys.exit(run.returncode)


if __name__ == "__main__":
    main()
