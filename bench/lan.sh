#!/usr/bin/env bash
# LAN-bound fan-out: every host's port shaped to B Mbit/s both ways, host 1 publishing an S MiB
# release, N - 1 hosts downloading it; lanpatch, HTTP from host 1 (nginx) and BitTorrent (host 1
# seeding) in one invocation. See bench/fanout.sh for the columns and the other knobs.
#
# usage: sudo bench/lan.sh [N=16] [S_MIB=64] [B_MBIT=20]
#
# 20 Mbit/s ports are the rate this lab's two cores carry for N = 16 and 32 without binding (the
# CPU share is printed beside each figure); 100 Mbit/s is the CPU-efficiency case, where the
# cores bind before the ports do.
HERE=$(cd "$(dirname "$0")" && pwd)
MODE=lan exec "$HERE/fanout.sh" "${1:-16}" "${2:-64}" "${3:-20}"
