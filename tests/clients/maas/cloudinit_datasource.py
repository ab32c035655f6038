#!/usr/bin/env python3
"""cloud-init's own MAAS datasource (Debian package `cloud-init`) against Ingot's metadata
service, with a machine's OAuth credentials. Run with the system python3 that has the
`cloudinit` package; the seed JSON comes from `libmaas_scenario.py prepare-metadata`.

Checks, through cloud-init's code paths:
  - read_maas_seed_url() with an OauthUrlHelper: instance-id, local-hostname, public-keys,
    vendor-data (must parse as YAML) and user-data;
  - DataSourceMAAS.get_data(): the datasource as cloud-init runs it at boot
    (wait_for_metadata_service, then the crawl), with its instance id and hostname;
  - wrong credentials are refused (cloud-init sees an HTTP 401 UrlError).
"""

import json
import sys
import tempfile

from cloudinit import helpers, url_helper
from cloudinit.sources import DataSourceMAAS


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def main(seed_path):
    with open(seed_path) as f:
        seed = json.load(f)
    tmp = tempfile.mkdtemp(prefix="ingot-cloudinit-")
    creds = {k: seed[k] for k in ("consumer_key", "token_key", "token_secret")}

    # A wrong secret: 401 (and a Date header, which OauthUrlHelper uses for clock skew).
    bad = url_helper.OauthUrlHelper(
        consumer_key=creds["consumer_key"], token_key=creds["token_key"],
        token_secret="not-the-secret", skew_data_file=tmp + "/skew-bad.json",
    )
    try:
        bad.readurl(seed["metadata_url"] + "2012-03-01/meta-data/instance-id", retries=0)
        raise AssertionError("wrong token secret was accepted")
    except url_helper.UrlError as e:
        check(e.code == 401, f"wrong secret -> {e.code}")
        check("date" in {k.lower() for k in (e.headers or {})}, f"401 without Date: {e.headers}")
    print("[cloud-init] wrong secret -> 401 with Date", flush=True)

    oauth = url_helper.OauthUrlHelper(skew_data_file=tmp + "/skew.json", **creds)
    userdata, metadata, vendordata = DataSourceMAAS.read_maas_seed_url(
        seed["metadata_url"], read_file_or_url=oauth.readurl, retries=1, timeout=10,
    )
    check(metadata["instance-id"] == seed["system_id"], f"instance-id {metadata['instance-id']!r}")
    check(metadata["local-hostname"] == seed["fqdn"], f"local-hostname {metadata['local-hostname']!r}")
    check(seed["ssh_key"] in metadata.get("public-keys", ""), f"public-keys {metadata.get('public-keys')!r}")
    check(isinstance(vendordata, dict) and "cloud-init" in vendordata, f"vendor-data {vendordata!r}")
    check(userdata == seed["user_data"].encode(), f"user-data {userdata!r}")
    print(f"[cloud-init] read_maas_seed_url: instance-id={metadata['instance-id']} "
          f"local-hostname={metadata['local-hostname']} user-data={len(userdata)} bytes", flush=True)

    # The datasource as cloud-init instantiates it at boot.
    sys_cfg = {"datasource": {"MAAS": {"metadata_url": seed["metadata_url"], **creds}}}
    paths = helpers.Paths({"cloud_dir": tmp + "/cloud", "run_dir": tmp + "/run"})
    ds = DataSourceMAAS.DataSourceMAAS(sys_cfg, distro=None, paths=paths)
    ds.ds_cfg["max_wait"] = 20
    ds.ds_cfg["timeout"] = 10
    ds._oauth_helper = oauth  # the same helper, with a skew file under tmp instead of /run
    check(ds.get_data(), "DataSourceMAAS.get_data() returned False")
    check(ds.get_instance_id() == seed["system_id"], f"instance id {ds.get_instance_id()!r}")
    check(ds.get_hostname().hostname == seed["fqdn"].split(".")[0], f"hostname {ds.get_hostname()!r}")
    check(ds.userdata_raw == seed["user_data"].encode(), "userdata_raw")
    check(seed["ssh_key"] in ds.get_public_ssh_keys(), f"ssh keys {ds.get_public_ssh_keys()!r}")
    check(ds.check_instance_id(sys_cfg), "check_instance_id with the same credentials")
    print("[cloud-init] DataSourceMAAS.get_data(): instance id, hostname, keys, user-data OK", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
