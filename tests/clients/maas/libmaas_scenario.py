#!/usr/bin/env python3
"""python-libmaas against an Ingot region, unchanged: the client bootstraps from describe/,
signs with OAuth PLAINTEXT and sends multipart bodies, exactly as it does against MAAS.

Phases (run by scripts/test-maas-clients.sh):
  lifecycle          connect with an API key, list, commission, tag, allocate with
                     constraints (and the 409 case), deploy with user_data and wait for
                     Deployed, power off/on/query, release and wait for Ready; log in with
                     a username and password.
  prepare-metadata   leave one machine in Deploying with user_data and an SSH key on its
                     owner, issue its metadata credentials, write them to a JSON file for
                     the cloud-init datasource check.
  check-deployed     after cloud-init read user-data, the machine must be Deployed.

Exit status 0 means every check passed; any failure raises.
"""

import argparse
import json
import sys
import time

import maas.client
from maas.client.bones import CallError
from maas.client.enum import NodeStatus, PowerState
from maas.client.viscera.machines import MachineNotFound

POLL = 0.2  # seconds between libmaas's own status polls (its default is 5)


def step(msg):
    print(f"[libmaas] {msg}", flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def wait_for(machine, statuses, timeout=60):
    deadline = time.monotonic() + timeout
    while machine.status not in statuses:
        if time.monotonic() > deadline:
            raise AssertionError(f"{machine.hostname} stuck in {machine.status_name}")
        time.sleep(POLL)
        machine.refresh()
    return machine


def lifecycle(args):
    client = maas.client.connect(args.url, apikey=args.apikey)
    me = client.users.whoami()
    step(f"connected as {me.username} (admin={me.is_admin})")
    check(me.is_admin, "the scenario key must be an administrator's")

    version = client.version.get()
    check("authenticate-api" in version.capabilities, f"capabilities: {version.capabilities}")

    machines = client.machines.list()
    step(f"listed {len(machines)} machines: {[m.hostname for m in machines]}")
    check(len(machines) >= 3, "expected the sim fleet")
    for m in machines:
        check(isinstance(m.status, NodeStatus), f"status enum for {m.hostname}")
        check(len(m.system_id) == 6, f"system_id {m.system_id!r}")
        check(m.zone.name == "default" and m.pool.name == "default", "default zone and pool")

    # Filters are applied by the server.
    first = machines[0]
    only = client.machines.list(hostnames=[first.hostname])
    check([m.system_id for m in only] == [first.system_id], f"hostname filter: {only}")

    # Commission everything that is not Ready yet (sim machines start New).
    for m in machines:
        if m.status != NodeStatus.READY:
            m.commission(wait=True, wait_interval=POLL)
            step(f"commissioned {m.hostname}: {m.status_name}, {m.cpus} CPUs, {m.memory} MiB")
    machines = client.machines.list()
    check(all(m.status == NodeStatus.READY for m in machines), "all Ready")
    check(all(m.cpus > 0 and m.memory > 0 for m in machines), "inventory after commissioning")
    check(all(len(m.interfaces) >= 1 for m in machines), "interface_set")
    check(all(m.boot_interface is not None for m in machines), "boot_interface")

    # A manual tag (no definition), applied by hand to the biggest machine.
    biggest = max(machines, key=lambda m: (m.cpus, m.memory))
    tag = client.tags.create("ingot-big", comment="applied by the libmaas scenario")
    biggest.tags.add(tag)
    biggest.refresh()
    check("ingot-big" in [t.name for t in biggest.tags], f"tag applied: {biggest.tags}")
    # viscera's list() only filters by hostname; the bones layer passes any MAAS filter.
    tagged = client._origin.Machines._handler.read(tags=["ingot-big"], status=["ready"])
    check([m["system_id"] for m in tagged] == [biggest.system_id], f"tag filter: {tagged}")

    # Allocate with constraints: the tag and its exact shape pick one machine.
    m = client.machines.allocate(tags=["ingot-big"], cpus=biggest.cpus, memory=biggest.memory, zone="default")
    check(m.system_id == biggest.system_id, f"allocated {m.hostname}, wanted {biggest.hostname}")
    check(m.status == NodeStatus.ALLOCATED and m.owner is not None, f"allocated: {m.status_name}")
    step(f"allocated {m.hostname} ({m.cpus} CPUs, {m.memory} MiB) with tags/cpus/memory/zone")

    # Nothing has 4096 CPUs: MAAS answers 409, which libmaas raises as MachineNotFound.
    try:
        client.machines.allocate(cpus=4096)
        raise AssertionError("allocate(cpus=4096) succeeded")
    except MachineNotFound:
        step("allocate(cpus=4096) -> 409 -> MachineNotFound")

    # Deploy with user_data and wait for Deployed.
    user_data = b"#cloud-config\nruncmd:\n  - [touch, /root/ingot-was-here]\n"
    m.deploy(user_data=user_data, distro_series="noble", hwe_kernel="ga-24.04", wait=True, wait_interval=POLL)
    check(m.status == NodeStatus.DEPLOYED, f"deployed: {m.status_name} ({m.status_message})")
    check(m.distro_series == "noble" and m.osystem == "ubuntu", f"{m.osystem}/{m.distro_series}")
    step(f"deployed {m.hostname}: {m.status_name}")

    # Power control through the sim BMC.
    m.power_off(wait=True, wait_interval=POLL)
    check(m.power_state == PowerState.OFF, f"after power_off: {m.power_state}")
    check(m.query_power_state() == PowerState.OFF, "query after power_off")
    m.power_on(wait=True, wait_interval=POLL)
    check(m.power_state == PowerState.ON, f"after power_on: {m.power_state}")
    check(m.query_power_state() == PowerState.ON, "query after power_on")
    step("power off / query / on / query")

    # Release and wait for Ready.
    m.release(wait=True, wait_interval=POLL)
    check(m.status == NodeStatus.READY and m.owner is None, f"released: {m.status_name}, owner {m.owner}")
    step(f"released {m.hostname}: {m.status_name}")

    # Power parameters through machine update (power_parameters_<name> form fields).
    params = m.get_power_parameters()
    check(params.get("power_address"), f"power parameters: {params}")
    check("power_pass" not in params, "the BMC password is never returned")
    m.set_power("sim", {"power_address": params["power_address"], "power_user": "operator"})
    check(m.get_power_parameters().get("power_user") == "operator", "power_user updated")
    m.set_power("sim", {"power_address": params["power_address"], "power_user": params.get("power_user", "admin")})

    # Erasing release goes through Disk erasing.
    m2 = client.machines.allocate(hostname=m.hostname)
    m2.release(erase=True, quick_erase=True, wait=True, wait_interval=POLL)
    check(m2.status == NodeStatus.READY, f"erase release: {m2.status_name}")
    step("allocate by hostname, release with quick_erase")

    # A second user, logged in with a password through /MAAS/accounts/authenticate/.
    client.users.create("scenario-user", "a-long-password", email="user@example.com")
    user_client = maas.client.login(args.url, username="scenario-user", password="a-long-password")
    check(user_client.users.whoami().username == "scenario-user", "login")
    step("login() with username and password")

    # A user does not see, and cannot act on, a machine another user owns.
    held = client.machines.allocate()
    visible = [x.system_id for x in user_client.machines.list()]
    check(held.system_id not in visible, f"{held.hostname} (admin's) visible to the user: {visible}")
    check(len(visible) == len(machines) - 1, f"the user sees the unowned machines: {visible}")
    try:
        user_client.machines.get(held.system_id)
        raise AssertionError("the user read the admin's machine")
    except CallError as e:
        check(e.status == 404, f"reading another user's machine: {e.status}")
    held.release(wait=True, wait_interval=POLL)
    step("another user's machine is invisible (list) and 404 (read)")

    # Events are queryable.
    events = client.events.query(hostnames=[m.hostname], limit=50)
    check(len(list(events)) > 0, "events for the deployed machine")

    # Zones, pools, SSH keys and boot resources are readable.
    check([z.name for z in client.zones.list()] == ["default"], "zones")
    check([p.name for p in client.resource_pools.list()] == ["default"], "pools")
    check(len(client.boot_resources.list()) >= 1, "boot resources")
    step("lifecycle scenario passed")


def prepare_metadata(args):
    client = maas.client.connect(args.url, apikey=args.apikey)
    key = client.ssh_keys.create(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIIngotScenarioKeyForTheMetadataTest0000 scenario@ingot"
    )
    ready = [m for m in client.machines.list() if m.status == NodeStatus.READY]
    check(ready, "a Ready machine for the metadata check")
    m = ready[-1]
    # Manual power: nothing boots it, so it stays in Deploying until the "deployed OS"
    # (cloud-init's datasource) reads its user-data.
    m.set_power("manual", {})
    user_data = b"#cloud-config\nhostname: from-user-data\n"
    m.deploy(user_data=user_data, wait=False)
    m.refresh()
    check(m.status == NodeStatus.DEPLOYING, f"deploying: {m.status_name}")
    origin = client._origin  # the bones layer: op=get_token has no viscera wrapper
    token = origin.Machine._handler.get_token(system_id=m.system_id)
    out = {
        "metadata_url": args.url.rstrip("/") + "/metadata/",
        "system_id": m.system_id,
        "fqdn": m.fqdn,
        "ssh_key": key.key,
        "user_data": user_data.decode(),
        "consumer_key": token["consumer_key"],
        "token_key": token["token_key"],
        "token_secret": token["token_secret"],
    }
    with open(args.out, "w") as f:
        json.dump(out, f)
    step(f"{m.hostname} is Deploying; metadata credentials written to {args.out}")


def check_deployed(args):
    client = maas.client.connect(args.url, apikey=args.apikey)
    with open(args.input) as f:
        seed = json.load(f)
    m = client.machines.get(seed["system_id"])
    wait_for(m, {NodeStatus.DEPLOYED}, timeout=10)
    step(f"{m.hostname} is {m.status_name} after cloud-init read its user-data")
    m.release(wait=False)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("phase", choices=["lifecycle", "prepare-metadata", "check-deployed"])
    p.add_argument("--url", required=True, help="e.g. http://127.0.0.1:5240/MAAS/")
    p.add_argument("--apikey", required=True)
    p.add_argument("--out")
    p.add_argument("--input")
    args = p.parse_args()
    {"lifecycle": lifecycle, "prepare-metadata": prepare_metadata, "check-deployed": check_deployed}[args.phase](args)


if __name__ == "__main__":
    try:
        main()
    except CallError as e:
        print(f"[libmaas] FAILED: {e}\n{e.content!r}", file=sys.stderr)
        sys.exit(1)
