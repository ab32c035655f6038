"""The seed article's demo flow (phoenixnap/bare-metal-cloud-demo-scripts, k8s-demo.py), replayed
with plain HTTP requests as that script sends them; only the hosts differ.

Token (Basic auth, form body with only grant_type) → 3 concurrent POST /bmc/v1beta/servers
(200 exactly, status "creating", public IP already there) → GET each every 2 s while
"creating"; the first "powered-on" is the master, its public IP and hostname from the GET →
DELETE each (200, JSON body). The SSH part of the demo is out of scope here.

    python demo_scenario.py --url http://127.0.0.1:PORT --client-id ID --client-secret SECRET
"""

import argparse
import base64
import concurrent.futures
import json
import sys
import time

import requests

POLL_INTERVAL_S = 2
POLL_LIMIT = 60  # the demo polls forever; a test must not


def ssh_key() -> str:
    blob = b"\0\0\0\x0bssh-ed25519" + b"\0\0\0\x20" + b"\x2a" * 32
    return "ssh-ed25519 " + base64.b64encode(blob).decode() + " demo@ingot"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--client-secret", required=True)
    args = ap.parse_args()
    api = args.url + "/bmc/v1beta/"

    # services/bmc_api_auth.py: Basic header, form with grant_type only, 200 required.
    basic = base64.standard_b64encode(f"{args.client_id}:{args.client_secret}".encode()).decode()
    r = requests.post(
        args.url + "/auth/realms/BMC/protocol/openid-connect/token",
        headers={"Content-Type": "application/x-www-form-urlencoded", "Authorization": "Basic " + basic},
        data={"grant_type": "client_credentials"},
        timeout=10,
    )
    assert r.status_code == 200, (r.status_code, r.text)
    token = r.json()["access_token"]
    session = requests.Session()
    session.headers.update({"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    print("Successfully retrieved API token")

    # server-settings.conf of the 2020 demo: 3 x d0.t1.tiny in PHX, ubuntu/bionic, public.
    def create(i: int) -> dict:
        body = {
            "hostname": f"host-{i}",
            "description": f"host-{i}",
            "public": True,
            "location": "PHX",
            "os": "ubuntu/bionic",
            "type": "d0.t1.tiny",
            "sshKeys": [ssh_key()],
        }
        resp = session.post(api + "servers", data=json.dumps(body), timeout=30)
        assert resp.status_code == 200, (resp.status_code, resp.text)
        return resp.json()

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        provisioned = list(pool.map(create, range(3)))
    for s in provisioned:
        assert s["status"] == "creating", s
        assert s["publicIpAddresses"], f"the demo SSHes to publicIpAddresses[0] of the POST answer: {s}"
        print(f"Server created, provisioning {s['hostname']}...")

    master = None
    for s in provisioned:
        for _ in range(POLL_LIMIT):
            resp = session.get(api + "servers/" + s["id"], timeout=30)
            assert resp.status_code == 200, (resp.status_code, resp.text)
            got = resp.json()
            if got["status"] != "creating":
                break
            time.sleep(POLL_INTERVAL_S)
        assert got["status"] == "powered-on", f"{s['hostname']} ended polling in {got['status']}"
        assert got["publicIpAddresses"][0] == s["publicIpAddresses"][0], (got, s)
        if master is None:
            master = (got["hostname"], got["publicIpAddresses"][0])
            print(f"ASSIGNED MASTER SERVER: {master[0]} ({master[1]})")
        else:
            print(f"Server provisioned {got['hostname']}")

    # k8s-demo.py -d0: DELETE each, expect 200 and print the JSON body.
    for s in provisioned:
        resp = session.delete(api + "servers/" + s["id"], timeout=30)
        assert resp.status_code == 200, (resp.status_code, resp.text)
        print(json.dumps(resp.json()))
        assert resp.json()["serverId"] == s["id"]
    resp = session.get(api + "servers", timeout=30)
    assert resp.status_code == 200 and resp.json() == [], resp.text
    print("demo scenario passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
