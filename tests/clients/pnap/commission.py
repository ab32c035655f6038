"""Commissions every New machine of a region through the native API and waits until all are
Ready, so the cloud API has a fleet to sell. Operator key: `ingot admin create-user --admin`.

    python commission.py --url http://127.0.0.1:PORT --apikey KEY
"""

import argparse
import sys
import time

import requests


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--apikey", required=True)
    ap.add_argument("--timeout", type=float, default=120)
    args = ap.parse_args()
    s = requests.Session()
    s.headers["Authorization"] = "Bearer " + args.apikey
    machines = s.get(args.url + "/api/v1/machines", timeout=10).json()
    assert machines, "the region has no machines (start it with --sim-machines N)"
    for m in machines:
        if m["status_name"] == "New":
            r = s.post(f"{args.url}/api/v1/machines/{m['id']}/actions/commission", timeout=30)
            assert r.status_code == 200, (r.status_code, r.text)
    deadline = time.monotonic() + args.timeout
    while True:
        states = [m["status_name"] for m in s.get(args.url + "/api/v1/machines", timeout=10).json()]
        if all(st == "Ready" for st in states):
            print(f"{len(states)} machines Ready")
            return 0
        if time.monotonic() > deadline:
            print("machines not Ready in time:", states, file=sys.stderr)
            return 1
        time.sleep(0.2)


if __name__ == "__main__":
    sys.exit(main())
