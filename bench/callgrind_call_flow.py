"""N guarded calls of `bench_call_paths`' model, for counting instructions with callgrind.

Instructions are steadier than time on a shared machine. Run it under callgrind with N calls
and with none, and divide the difference by N:

    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/callgrind_call_flow.py 1000 invoke   # "Collected : …"
    valgrind --tool=callgrind --callgrind-out-file=/dev/null \\
        .venv/bin/python bench/callgrind_call_flow.py 0 invoke

Both runs make 200 warm-up calls first (caches: profile, price, model instance).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_call_paths import PROMPT, BenchModel, build


def main() -> None:
    calls = int(sys.argv[1])
    path = sys.argv[2] if len(sys.argv) > 2 else "invoke"
    model = build(BenchModel())
    if path == "invoke":
        for _ in range(200 + calls):
            model.invoke(PROMPT)
    elif path == "ainvoke":

        async def run() -> None:
            for _ in range(200 + calls):
                await model.ainvoke(PROMPT)

        asyncio.run(run())
    else:
        raise SystemExit(f"unknown path {path!r}: invoke or ainvoke")


if __name__ == "__main__":
    main()
