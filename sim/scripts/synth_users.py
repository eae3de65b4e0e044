#!/usr/bin/env python3
"""Write a JSON-lines corpus of many synthetic users for plait-sim scale runs.

Each user gets `--speeches` speeches drawn at random (with replacement, seeded)
from a tinyshakespeare-style file (blank-line separated blocks whose first line
is "NAME:"), so a fleet of any size can be built from the shared asset:

    python3 sim/scripts/synth_users.py --users 2400 --out /tmp/users.jsonl
    plait-sim --source jsonl --data /tmp/users.jsonl --min-lines 10 ...

The text is public-domain Shakespeare; the users are fictitious.
"""
import argparse
import json
import random
import re


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="../shared/assets/tinyshakespeare.txt")
    ap.add_argument("--users", type=int, default=2400)
    ap.add_argument("--speeches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    text = open(a.corpus, encoding="utf-8").read()
    speeches = []
    for block in re.split(r"\n[ \t\r]*\n", text):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and lines[0].rstrip().endswith(":"):
            speeches.append("\n".join(lines[1:]).rstrip())
    rng = random.Random(a.seed)
    with open(a.out, "w", encoding="utf-8") as f:
        for u in range(a.users):
            for _ in range(a.speeches):
                f.write(json.dumps({"user": "u%06d" % u, "text": rng.choice(speeches)}) + "\n")


if __name__ == "__main__":
    main()
