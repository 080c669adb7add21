#!/usr/bin/env bash
# Several hosts on one machine (root): network namespaces on a bridge, a Ray cluster across them (head,
# prefill host, decode host) and `pdserve up --address` on the head, as the README's "Run on several
# machines" does on real machines. The tests' harness (tests/multihost/hosts.py) does the work.
#
#   scripts/multihost.sh up [--roles head,prefill,decode] [--model DIR|NAME]   # prints the hosts and endpoints
#   scripts/multihost.sh status                                                # instances on this machine
#   scripts/multihost.sh down [K]                                              # remove 10.88.K.0/24 (default 0)
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python tests/multihost/hosts.py "$@"
