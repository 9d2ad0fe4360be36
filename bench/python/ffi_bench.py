"""FFI call cost from Python: `put` and `get` through the generated UniFFI bindings.

Run by `outpost-bench` (figure 8), which generates the bindings from the library of
its own build profile and passes their directory. Prints one JSON line with per-call
p50 and mean in microseconds; the Rust side makes the same calls without the FFI.
"""

import argparse
import json
import statistics
import sys
import time


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bindings", required=True)
    ap.add_argument("--db", required=True)
    ap.add_argument("--n", type=int, default=1000)
    args = ap.parse_args()
    sys.path.insert(0, args.bindings)
    import outpost_ffi as ffi

    class NoToken(ffi.TokenProvider):
        async def token(self, refresh):
            return ""

    config = ffi.OutpostConfig(
        path=args.db,
        server_url="http://127.0.0.1:9/",
        collections=[ffi.CollectionSpec(name="answers",
                                        strategy=ffi.ConflictStrategy.LAST_WRITE_WINS)],
        durability=ffi.Durability.NORMAL,
    )
    db = ffi.Outpost.open(config, NoToken())

    def payload(i):
        # The same record as bench/src/util.rs payload(i), as compact JSON text.
        return json.dumps({
            "answer": "The patient reports fever for three days, no cough, drinking well.",
            "checked": i % 2 == 0,
            "notes": "Follow-up visit planned next week; referred to the district clinic.",
            "patient": f"p-{i:08}",
            "question": f"q-{i % 200:03}",
            "score": i % 97,
            "village": "Kole",
            "visit": i,
        }, separators=(",", ":"))

    clock = time.perf_counter_ns
    puts, gets = [], []
    for i in range(args.n):
        c, rid, data = "answers", f"r-{i:08}", payload(i)
        t = clock()
        db.put(c, rid, data)
        puts.append(clock() - t)
    for i in range(args.n):
        c, rid = "answers", f"r-{i:08}"
        t = clock()
        r = db.get(c, rid)
        gets.append(clock() - t)
        if r is None:
            raise SystemExit("python ffi: a written record is missing")
    db.close()
    us = lambda v: v / 1000.0
    print(json.dumps({
        "n": args.n,
        "put_p50_us": us(statistics.median(puts)),
        "put_mean_us": us(statistics.fmean(puts)),
        "get_p50_us": us(statistics.median(gets)),
        "get_mean_us": us(statistics.fmean(gets)),
    }))


if __name__ == "__main__":
    main()
