"""phoenixNAP's own Python SDK (pnap-bmc-api, pinned in requirements.txt) against `ingot serve`.

Token by OAuth2 client credentials, 3 concurrent creates, poll until powered-on, power off and
on, patch hostname, list, SSH keys and quotas, delete (and deprovision). Every step asserts what
the SDK returned; the SDK itself checks each Server document against its strict models.

    python sdk_scenario.py --url http://127.0.0.1:PORT --client-id ID --client-secret SECRET
"""

import argparse
import base64
import concurrent.futures
import sys
import time

import pnap_bmc_api
import requests
from pnap_bmc_api.api.quotas_api import QuotasApi
from pnap_bmc_api.api.servers_api import ServersApi
from pnap_bmc_api.api.ssh_keys_api import SSHKeysApi
from pnap_bmc_api.exceptions import ApiException
from pnap_bmc_api.models.server_create import ServerCreate
from pnap_bmc_api.models.server_patch import ServerPatch
from pnap_bmc_api.models.server_reset import ServerReset
from pnap_bmc_api.models.ssh_key_create import SshKeyCreate
from pnap_bmc_api.models.tag_assignment_request import TagAssignmentRequest

POLL_TIMEOUT_S = 60


def ssh_key(seed: int) -> str:
    blob = b"\0\0\0\x0bssh-ed25519" + b"\0\0\0\x20" + bytes([seed]) * 32
    return "ssh-ed25519 " + base64.b64encode(blob).decode() + f" sdk{seed}@ingot"


def get_token(url: str, client_id: str, secret: str) -> str:
    # What Terraform and pnapctl send: form credentials plus both scopes.
    r = requests.post(
        url + "/auth/realms/BMC/protocol/openid-connect/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret, "scope": "bmc bmc.read"},
        timeout=10,
    )
    assert r.status_code == 200, (r.status_code, r.text)
    body = r.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] > 0, body
    return body["access_token"]


def wait_status(servers: ServersApi, server_id: str, want: str) -> object:
    deadline = time.monotonic() + POLL_TIMEOUT_S
    while True:
        s = servers.servers_server_id_get(server_id)
        if s.status == want:
            return s
        assert s.status in ("creating", "rebooting", "resetting", "powered-on", "powered-off"), f"unexpected status {s.status}"
        assert time.monotonic() < deadline, f"{server_id} never reached {want}; last {s.status}"
        time.sleep(0.2)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--client-secret", required=True)
    args = ap.parse_args()

    token = get_token(args.url, args.client_id, args.client_secret)
    config = pnap_bmc_api.Configuration(host=args.url + "/bmc/v1")
    config.access_token = token
    client = pnap_bmc_api.ApiClient(config)
    servers = ServersApi(client)
    keys = SSHKeysApi(client)
    quotas = QuotasApi(client)
    print(f"pnap-bmc-api {pnap_bmc_api.__version__}: token issued")

    # An account default key, installed on every server that does not opt out.
    key = keys.ssh_keys_post(SshKeyCreate(default=True, name="sdk-default", key=ssh_key(5)))
    assert key.fingerprint.startswith("SHA256:") and key.default, key
    assert [k.id for k in keys.ssh_keys_get()] == [key.id]

    def create(i: int):
        return servers.servers_post(
            ServerCreate(hostname=f"sdk-{i}", description=f"sdk server {i}", os="ubuntu/jammy", type="d0.t1.tiny", location="PHX", ssh_keys=[ssh_key(i)])
        )

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        created = list(pool.map(create, range(1, 4)))
    for s in created:
        assert s is not None, "servers_post gave no Server: the status code must be 200"
        assert s.status == "creating", s.status
        assert s.type == "d0.t1.tiny" and s.location == "PHX", s
        assert s.private_ip_addresses and s.public_ip_addresses, s
        assert s.cpu_count >= 1 and s.cores_per_cpu >= 1 and s.ram.endswith("GB RAM"), s
    ids = [s.id for s in created]
    assert len(set(ids)) == 3
    assert len({s.public_ip_addresses[0] for s in created}) == 3, "distinct public addresses"
    print("created", ids)

    for sid in ids:
        s = wait_status(servers, sid, "powered-on")
        assert s.public_ip_addresses == next(c for c in created if c.id == sid).public_ip_addresses
    print("all powered-on")

    first = ids[0]
    r = servers.servers_server_id_actions_power_off_post(first)
    assert r.result, r
    assert servers.servers_server_id_get(first).status == "powered-off"
    try:
        servers.servers_server_id_actions_reboot_post(first)
        raise AssertionError("reboot of a powered-off server must be refused")
    except ApiException as e:
        assert e.status == 409, e
    r = servers.servers_server_id_actions_power_on_post(first)
    assert servers.servers_server_id_get(first).status == "powered-on"
    r = servers.servers_server_id_actions_reboot_post(first)
    assert r.result, r
    wait_status(servers, first, "powered-on")
    print("power off/on and reboot done")

    # Shutdown and power-on on the second; reset (reinstall) on the third.
    servers.servers_server_id_actions_shutdown_post(ids[1])
    assert servers.servers_server_id_get(ids[1]).status == "powered-off"
    servers.servers_server_id_actions_power_on_post(ids[1])
    r = servers.servers_server_id_actions_reset_post(ids[2], ServerReset())
    assert r.result, r
    s = wait_status(servers, ids[2], "powered-on")
    assert s.public_ip_addresses == created[2].public_ip_addresses, s
    print("shutdown and reset done")

    # Tags: PUT replaces them; list filters by name.value.
    tagged = servers.servers_server_id_tags_put(first, [TagAssignmentRequest(name="env", value="sdk")])
    assert [(t.name, t.value) for t in tagged.tags] == [("env", "sdk")], tagged.tags
    assert [s.id for s in servers.servers_get(tag=["env.sdk"])] == [first]
    assert servers.servers_get(tag=["env.other"]) == []

    patched = servers.servers_server_id_patch(first, ServerPatch(hostname="sdk-renamed", description="renamed"))
    assert patched.hostname == "sdk-renamed" and patched.description == "renamed", patched
    assert servers.servers_server_id_get(first).hostname == "sdk-renamed"

    listed = servers.servers_get()
    assert sorted(s.id for s in listed) == sorted(ids), listed
    assert {s.hostname for s in listed} == {"sdk-renamed", "sdk-2", "sdk-3"}

    q = quotas.quotas_quota_id_get("bmc.servers.max_count")
    assert q.used == 3 and q.unit == "COUNT", q
    assert [x.id for x in quotas.quotas_get()] == ["bmc.servers.max_count"]
    print("patched, listed; quota", q.used, "of", q.limit)

    # Delete two (200 DeleteResult) and deprovision one (202, a JSON string).
    for sid in ids[:2]:
        d = servers.servers_server_id_delete(sid)
        assert d.server_id == sid and d.result, d
    msg = servers.servers_server_id_actions_deprovision_post(ids[2], pnap_bmc_api.RelinquishIpBlock(delete_ip_blocks=False))
    assert isinstance(msg, str) and msg, msg
    for sid in ids:
        try:
            servers.servers_server_id_get(sid)
            raise AssertionError(f"{sid} still visible after delete")
        except ApiException as e:
            assert e.status == 404, e
    assert servers.servers_get() == []
    d = keys.ssh_keys_ssh_key_id_delete(key.id)
    assert d.ssh_key_id == key.id
    print("deleted; sdk scenario passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
