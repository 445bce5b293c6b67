"""The privacy scan's id profile of a day-partitioned 1M-user export: through the views (one
query over every id column, what a DuckDB file still does) against file by file (one cached
profile per Parquet file, merged), cold and after one day's partitions were rewritten.

    .venv/bin/python benchmarks/bench_privacy_profile.py [--export PATH]

``--export``: a DuckDB export to partition (default the simulator's L export of
``bench_report.py``); its day-partitioned copy is made once beside it, as
``bench_validate_incremental.py`` makes it. Each case opens the export in this process with
a cache folder of its own (validation and repeated events already cached, so only the
profile is timed; no profile is cached when each case starts but the last, which has the
files' profiles of the case before it). Prints seconds per case and whether they agree.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def main() -> None:
    import bench_report
    import bench_validate_incremental as incremental

    from whispers_lab.export import open_export
    from whispers_lab.report import privacy

    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--export", type=Path, default=bench_report.SIM)
    args = ap.parse_args()
    if not args.export.exists():
        bench_report._ensure_exports(["sim"])
    folder = incremental._partitioned(args.export.resolve())
    os.environ["WHISPERS_LAB_CACHE"] = tempfile.mkdtemp(prefix="whispers-bench-privacy-")
    with open_export(folder):  # validation and the repeated events, cached once
        pass

    def profile(by_file: bool) -> tuple[float, list[privacy.IdColumn]]:
        real = privacy._profile_by_file
        if not by_file:
            privacy._profile_by_file = lambda export, columns, units: None
        try:
            with open_export(folder) as export:
                t = time.perf_counter()
                out = privacy.id_profile(export)
                return time.perf_counter() - t, out
        finally:
            privacy._profile_by_file = real

    privacy_cache = Path(os.environ["WHISPERS_LAB_CACHE"]) / "privacy"
    views_s, views = profile(by_file=False)
    shutil.rmtree(privacy_cache)  # (else the next case reads the whole profile back)
    cold_s, cold = profile(by_file=True)
    day = incremental._rewrite_one_day(folder)
    with open_export(folder):  # the rewritten day validated, so only the profile is timed
        pass
    day_s, again = profile(by_file=True)
    print(f"id profile of {folder.name} ({sum(1 for _ in folder.rglob('*.parquet'))} files), "
          f"{os.cpu_count()} cores")
    print(f"  through the views, cold          {views_s:7.2f} s")
    print(f"  file by file, cold               {cold_s:7.2f} s   same ranges: {cold == views}")
    print(f"  file by file, {day} rewritten {day_s:7.2f} s   same ranges: {again == cold}")


if __name__ == "__main__":
    main()
