#!/usr/bin/env bash
# check-layering.sh: the dependency arrows run one way (docs/architecture.md):
#   client, aggregator, sim, bench, tools -> lib;  proto -> lib;  lib -> nothing of theirs
# and the aggregator never includes a device (client/) header.
#
# Fails, naming the file and the include, when
#   - a file under lib/, proto/ or aggregator/ includes a header of the device
#     engine: one living in client/, or a public header that client/ implements
#     (CLIENT_PUBLIC below);
#   - a file under lib/ includes a header of the aggregator, the simulator or
#     the wire format: one living in aggregator/, sim/ or proto/, or a public
#     header they implement (AGG_PUBLIC, SIM_PUBLIC, WIRE_PUBLIC).
# A public header belongs to the directory whose code implements it; when a
# header moves between directories, move its name between the lists.
# Usage: scripts/check-layering.sh [ROOT]   (exit 0: clean, 1: violations)
set -euo pipefail
root=${1:-"$(cd "$(dirname "$0")/.." && pwd)"}
cd "$root"

CLIENT_PUBLIC="client.h data.h infer.h personal.h tensor.h tok.h train.h"
AGG_PUBLIC="agg.h aggcfg.h round.h server.h"
SIM_PUBLIC="sim.h"
WIRE_PUBLIC="wire.h"

bad=0
# check_dir DIR "FORBIDDEN_DIRS" "FORBIDDEN_PUBLIC_HEADERS" WHY
check_dir() {
  local dir=$1 fdirs=$2 fpub=$3 why=$4 f line inc base d h
  [ -d "$dir" ] || return 0
  while IFS= read -r f; do
    while IFS= read -r line; do
      inc=${line#*\"}
      inc=${inc%%\"*}
      base=${inc##*/}
      case "$inc" in
        plait/*)
          for h in $fpub; do
            if [ "$base" = "$h" ]; then
              echo "layering: $f includes \"$inc\", $why" >&2
              bad=1
            fi
          done
          ;;
        *)
          # A private header: where the compiler finds it (next to the file, else on the include path).
          if [ -f "$(dirname "$f")/$inc" ]; then
            h=$(realpath "$(dirname "$f")/$inc")
            for d in $fdirs; do
              case "$h" in "$(realpath "$d")"/*)
                echo "layering: $f includes \"$inc\" from $d/, $why" >&2
                bad=1 ;;
              esac
            done
          else
            for d in $fdirs; do
              if [ -f "$d/$base" ]; then
                echo "layering: $f includes \"$inc\" from $d/, $why" >&2
                bad=1
              fi
            done
          fi
          ;;
      esac
    done < <(grep -E '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" || true)
  done < <(find "$dir" -type f \( -name '*.c' -o -name '*.h' \) | sort)
}

for dir in lib proto aggregator; do
  check_dir "$dir" "client" "$CLIENT_PUBLIC" "a header of the device engine (client/): $dir/ must not depend on client/"
done
check_dir lib "aggregator sim proto" "$AGG_PUBLIC $SIM_PUBLIC $WIRE_PUBLIC" \
  "a header of the aggregator, the simulator or the wire format: lib/ depends on nothing of theirs"
# lib's public headers (every one in include/plait/ not listed above) must not
# pull in a header of theirs either, or lib's users would get it through lib.
for h in $CLIENT_PUBLIC $AGG_PUBLIC $SIM_PUBLIC $WIRE_PUBLIC; do
  [ -f "include/plait/$h" ] || { echo "layering: include/plait/$h is listed in $0 but does not exist" >&2; bad=1; }
done
for f in include/plait/*.h; do
  case " $CLIENT_PUBLIC $AGG_PUBLIC $SIM_PUBLIC $WIRE_PUBLIC " in *" ${f##*/} "*) continue ;; esac
  while IFS= read -r line; do
    inc=${line#*\"}
    inc=${inc%%\"*}
    for h in $CLIENT_PUBLIC $AGG_PUBLIC $SIM_PUBLIC $WIRE_PUBLIC; do
      if [ "$inc" = "plait/$h" ]; then
        echo "layering: $f (a lib header) includes \"$inc\", which lib does not implement" >&2
        bad=1
      fi
    done
  done < <(grep -E '^[[:space:]]*#[[:space:]]*include[[:space:]]*"' "$f" || true)
done

if [ "$bad" -ne 0 ]; then
  echo "layering: FAILED (docs/architecture.md: client, aggregator, sim, bench -> lib -> nothing of theirs)" >&2
  exit 1
fi
echo "layering: ok"
