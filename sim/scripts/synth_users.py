#!/usr/bin/env python3
"""Write a JSON-lines corpus of many synthetic users for plait-sim scale runs.

Each user gets `--speeches` speeches dealt at random (seeded, WITHOUT
replacement) from a tinyshakespeare-style file (blank-line separated blocks
whose first line is "NAME:"): no two users share a speech, so no user's
held-out text is in another user's training data. When the corpus holds fewer
than users x speeches speeches (7,097 in tinyshakespeare), every user gets the
same smaller share, floor(7097 / users), and a note says so; more users than
speeches is an error. `--replace` draws with replacement instead (users may
share text: for throughput runs only, never for accuracy):

    python3 sim/scripts/synth_users.py --users 2400 --out /tmp/users.jsonl
    plait-sim --source jsonl --data /tmp/users.jsonl --min-lines 10 ...

The text is public-domain Shakespeare; the users are fictitious.
"""
import argparse
import json
import random
import re
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="../shared/assets/tinyshakespeare.txt")
    ap.add_argument("--users", type=int, default=2400)
    ap.add_argument("--speeches", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", required=True)
    ap.add_argument("--replace", action="store_true", help="draw with replacement (users may share text)")
    a = ap.parse_args()
    text = open(a.corpus, encoding="utf-8").read()
    speeches = []
    for block in re.split(r"\n[ \t\r]*\n", text):
        lines = block.strip("\n").split("\n")
        if len(lines) >= 2 and lines[0].rstrip().endswith(":"):
            speeches.append("\n".join(lines[1:]).rstrip())
    if a.users < 1 or a.speeches < 1:
        sys.exit("synth_users: --users and --speeches must be at least 1")
    if a.replace:
        rng = random.Random(a.seed)
        with open(a.out, "w", encoding="utf-8") as f:
            for u in range(a.users):
                for _ in range(a.speeches):
                    f.write(json.dumps({"user": "u%06d" % u, "text": rng.choice(speeches)}) + "\n")
        return
    per = min(a.speeches, len(speeches) // a.users)
    if per < 1:
        sys.exit("synth_users: %d users need at least %d speeches; %s has %d (at most %d users)"
                 % (a.users, a.users, a.corpus, len(speeches), len(speeches)))
    if per < a.speeches:
        print("synth_users: %d speeches for %d users: %d each (not %d), so that no two users share text"
              % (len(speeches), a.users, per, a.speeches), file=sys.stderr)
    rng = random.Random(a.seed)
    order = list(range(len(speeches)))
    rng.shuffle(order)
    with open(a.out, "w", encoding="utf-8") as f:
        for u in range(a.users):
            for k in range(per):
                f.write(json.dumps({"user": "u%06d" % u, "text": speeches[order[u * per + k]]}) + "\n")


if __name__ == "__main__":
    main()
