//! The store test suite, run against both SQLite and PostgreSQL: each case is one async fn
//! over a fresh database, instantiated per backend by `both!`.

use futures::future::join_all;
use ingot_store::testing::{TestDb, postgres, sqlite};
use ingot_store::{AllocationConstraints, Effects, MachineFilter, Set, Store, StoreError};
use ingot_types::inventory::{Disk, Inventory, Nic};
use ingot_types::lifecycle::{NodeStatus, Trigger};
use ingot_types::machine::NewMachine;
use ingot_types::net::{Lease, Sighting};
use ingot_types::power::{PowerParameters, PowerState, PowerType};
use std::collections::HashSet;

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod on_sqlite { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { let db = super::sqlite().await; super::$name(&db).await; } )* }
        mod on_postgres { $( #[tokio::test(flavor = "multi_thread", worker_threads = 4)] async fn $name() { if let Some(db) = super::postgres().await { super::$name(&db).await; } else { eprintln!("PostgreSQL not configured; set INGOT_TEST_POSTGRES_URL"); } } )* }
    };
}

both!(
    users_and_api_keys,
    machine_crud_and_macs,
    lifecycle_transitions_record_events,
    illegal_transition_changes_nothing,
    racing_allocations_never_double_allocate,
    racing_transitions_on_one_machine,
    allocation_constraints,
    power_passwords_are_encrypted,
    boot_tokens,
    leases_and_discoveries,
    list_filters,
);

fn machine_with(hostname: &str, mac: &str) -> NewMachine {
    NewMachine {
        hostname: Some(hostname.into()),
        boot_mac: Some(mac.into()),
        power_type: Some(PowerType::Sim),
        ..Default::default()
    }
}

async fn ready_machine(
    s: &Store,
    hostname: &str,
    mac: &str,
    cpus: u32,
    mem: u64,
) -> ingot_types::machine::Machine {
    let m = s
        .create_machine(machine_with(hostname, mac), "test")
        .await
        .unwrap();
    s.transition(&m.id, Trigger::Commission, "test", "", &Effects::default())
        .await
        .unwrap();
    let inv = Inventory {
        cpu_count: cpus,
        memory_mib: mem,
        disks: vec![Disk {
            name: "vda".into(),
            size_bytes: 8 << 30,
            ..Default::default()
        }],
        interfaces: vec![Nic {
            name: "eth0".into(),
            mac: mac.into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let eff = Effects {
        inventory: Set::To(inv),
        ..Default::default()
    };
    s.transition(&m.id, Trigger::CommissioningSucceeded, "agent", "", &eff)
        .await
        .unwrap()
}

async fn users_and_api_keys(db: &TestDb) {
    let s = &db.store;
    let alice = s.create_user("alice", true).await.unwrap();
    assert!(alice.is_admin);
    assert!(matches!(
        s.create_user("alice", false).await,
        Err(StoreError::Conflict {
            field: "username",
            ..
        })
    ));
    let key = s.create_api_key(alice.id, "cli").await.unwrap();
    let full = key.as_maas_key();
    assert_eq!(full.split(':').count(), 3);
    let who = s
        .authenticate_api_key(Some(&key.consumer_key), &key.token_key, &key.token_secret)
        .await
        .unwrap();
    assert_eq!(who.unwrap().username, "alice");
    assert!(
        s.authenticate_api_key(None, &key.token_key, "wrong")
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.authenticate_api_key(Some("other"), &key.token_key, &key.token_secret)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        s.authenticate_api_key(None, "nope", &key.token_secret)
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(s.list_api_keys(alice.id).await.unwrap().len(), 1);
    s.delete_api_key(alice.id, &key.token_key).await.unwrap();
    assert!(
        s.authenticate_api_key(None, &key.token_key, &key.token_secret)
            .await
            .unwrap()
            .is_none()
    );
}

async fn machine_crud_and_macs(db: &TestDb) {
    let s = &db.store;
    let m = s
        .create_machine(machine_with("node1", "52:54:00:AA:00:01"), "test")
        .await
        .unwrap();
    assert_eq!(m.status, NodeStatus::New);
    assert_eq!(m.boot_mac.as_deref(), Some("52:54:00:aa:00:01"));
    assert_eq!(s.machine(&m.id).await.unwrap(), m);
    let by_mac = s
        .machine_by_mac("52-54-00-aa-00-01")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(by_mac.id, m.id);
    assert!(
        s.machine_by_mac("52:54:00:aa:00:99")
            .await
            .unwrap()
            .is_none()
    );
    // Same hostname or same MAC is a conflict and leaves nothing behind.
    let dup = s
        .create_machine(machine_with("node1", "52:54:00:aa:00:02"), "test")
        .await;
    assert!(
        matches!(
            dup,
            Err(StoreError::Conflict {
                field: "hostname",
                ..
            })
        ),
        "{dup:?}"
    );
    let dup = s
        .create_machine(machine_with("node2", "52:54:00:aa:00:01"), "test")
        .await;
    assert!(
        matches!(
            dup,
            Err(StoreError::Conflict {
                field: "mac_address",
                ..
            })
        ),
        "{dup:?}"
    );
    assert_eq!(s.count_machines().await.unwrap(), 1, "no partial writes");
    // Generated hostnames are unique.
    let mut names = HashSet::new();
    for _ in 0..20 {
        let m = s
            .create_machine(NewMachine::default(), "test")
            .await
            .unwrap();
        assert!(names.insert(m.hostname));
    }
    // Hardware given at creation is there in the same write (enlistment).
    let inv = Inventory {
        cpu_count: 8,
        memory_mib: 4096,
        disks: vec![Disk {
            name: "vda".into(),
            size_bytes: 1 << 33,
            ..Default::default()
        }],
        ..Default::default()
    };
    let enlisted = s
        .create_machine(
            NewMachine {
                inventory: Some(inv),
                ..machine_with("enl", "52:54:00:aa:00:77")
            },
            "enlistment",
        )
        .await
        .unwrap();
    assert_eq!(
        (
            enlisted.cpu_count,
            enlisted.memory_mib,
            enlisted.disks.len()
        ),
        (8, 4096, 1)
    );
    let unknown = ingot_types::MachineId::parse("zzzzzz").unwrap();
    assert!(matches!(
        s.machine(&unknown).await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn lifecycle_transitions_record_events(db: &TestDb) {
    let s = &db.store;
    let owner = s.create_user("bob", false).await.unwrap();
    let m = ready_machine(s, "n1", "52:54:00:00:00:01", 4, 8192).await;
    assert_eq!(
        (m.status, m.cpu_count, m.memory_mib),
        (NodeStatus::Ready, 4, 8192)
    );
    assert_eq!(m.disks.len(), 1);
    let m = s
        .allocate(&AllocationConstraints::default(), owner.id, "bob")
        .await
        .unwrap();
    assert_eq!(
        (m.status, m.owner, m.owner_name.as_deref()),
        (NodeStatus::Allocated, Some(owner.id), Some("bob"))
    );
    let eff = Effects {
        osystem: Set::To("ubuntu".into()),
        distro_series: Set::To("noble".into()),
        user_data: Set::To(Some("#cloud-config\n".into())),
        deadline_ms: Set::To(Some(i64::MAX / 2)),
        ..Default::default()
    };
    let m = s
        .transition(&m.id, Trigger::Deploy, "bob", "", &eff)
        .await
        .unwrap();
    assert_eq!(
        (m.status, m.distro_series.as_str()),
        (NodeStatus::Deploying, "noble")
    );
    assert!(m.deadline.is_some());
    assert_eq!(
        s.user_data(&m.id).await.unwrap().as_deref(),
        Some("#cloud-config\n")
    );
    let clear = Effects {
        deadline_ms: Set::To(None),
        ..Default::default()
    };
    let m = s
        .transition(&m.id, Trigger::DeploySucceeded, "agent", "", &clear)
        .await
        .unwrap();
    assert_eq!(m.status, NodeStatus::Deployed);
    let m = s
        .transition(
            &m.id,
            Trigger::Release { erase: false },
            "bob",
            "",
            &Effects::default(),
        )
        .await
        .unwrap();
    let free = Effects {
        owner: Set::To(None),
        ..Default::default()
    };
    let m = s
        .transition(
            &m.id,
            Trigger::ReleaseSucceeded,
            "engine",
            "power off confirmed",
            &free,
        )
        .await
        .unwrap();
    assert_eq!((m.status, m.owner), (NodeStatus::Ready, None));

    let events = s.events(&m.id, 100).await.unwrap();
    let path: Vec<_> = events
        .iter()
        .filter(|e| e.kind == "transition")
        .map(|e| e.to_status.unwrap())
        .collect();
    use NodeStatus::*;
    assert_eq!(
        path,
        vec![
            New,
            Commissioning,
            Ready,
            Allocated,
            Deploying,
            Deployed,
            Releasing,
            Ready
        ]
    );
    assert_eq!(events[0].from_status, None);
    assert_eq!(events[3].actor, "bob");
    assert_eq!(events.last().unwrap().message, "power off confirmed");
    assert!(events.windows(2).all(|w| w[0].at <= w[1].at));
}

async fn illegal_transition_changes_nothing(db: &TestDb) {
    let s = &db.store;
    let m = s
        .create_machine(machine_with("n1", "52:54:00:00:00:01"), "test")
        .await
        .unwrap();
    let err = s
        .transition(&m.id, Trigger::Deploy, "x", "", &Effects::default())
        .await
        .unwrap_err();
    match err {
        StoreError::IllegalTransition(e) => assert_eq!(e.current, NodeStatus::New),
        other => panic!("{other:?}"),
    }
    let after = s.machine(&m.id).await.unwrap();
    assert_eq!(after, m);
    assert_eq!(s.events(&m.id, 10).await.unwrap().len(), 1);
}

async fn racing_allocations_never_double_allocate(db: &TestDb) {
    let s = &db.store;
    const MACHINES: usize = 10;
    const RACERS: usize = 40;
    for i in 0..MACHINES {
        ready_machine(
            s,
            &format!("r{i}"),
            &format!("52:54:00:00:01:{i:02x}"),
            2,
            2048,
        )
        .await;
    }
    let mut users = Vec::new();
    for i in 0..RACERS {
        users.push(s.create_user(&format!("u{i}"), false).await.unwrap());
    }
    let results = join_all(users.iter().map(|u| {
        let s = s.clone();
        let uid = u.id;
        tokio::spawn(async move {
            s.allocate(&AllocationConstraints::default(), uid, "race")
                .await
        })
    }))
    .await;
    let mut won = Vec::new();
    let mut nomatch = 0;
    for r in results {
        match r.unwrap() {
            Ok(m) => won.push(m),
            Err(StoreError::NoMatch) => nomatch += 1,
            Err(e) => panic!("unexpected {e:?}"),
        }
    }
    assert_eq!(won.len(), MACHINES, "every machine allocated once");
    assert_eq!(nomatch, RACERS - MACHINES);
    let ids: HashSet<_> = won.iter().map(|m| m.id.clone()).collect();
    assert_eq!(ids.len(), MACHINES, "no machine allocated twice");
    // The database agrees with the winners.
    for m in &won {
        let stored = s.machine(&m.id).await.unwrap();
        assert_eq!(
            (stored.status, stored.owner),
            (NodeStatus::Allocated, m.owner)
        );
        let allocs = s
            .events(&m.id, 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|e| e.to_status == Some(NodeStatus::Allocated))
            .count();
        assert_eq!(allocs, 1);
    }
}

async fn racing_transitions_on_one_machine(db: &TestDb) {
    let s = &db.store;
    let m = ready_machine(s, "solo", "52:54:00:00:02:01", 2, 2048).await;
    let owner = s.create_user("o", false).await.unwrap();
    let c = AllocationConstraints {
        system_id: Some(m.id.to_string()),
        ..Default::default()
    };
    let results = join_all((0..20).map(|_| {
        let s = s.clone();
        let c = c.clone();
        tokio::spawn(async move { s.allocate(&c, owner.id, "race").await })
    }))
    .await;
    let ok = results
        .into_iter()
        .filter(|r| matches!(r, Ok(Ok(_))))
        .count();
    assert_eq!(ok, 1);
}

async fn allocation_constraints(db: &TestDb) {
    let s = &db.store;
    let u = s.create_user("u", false).await.unwrap();
    let small = ready_machine(s, "small", "52:54:00:00:03:01", 2, 2048).await;
    let big = ready_machine(s, "big", "52:54:00:00:03:02", 16, 65536).await;
    s.update_machine_fields(
        &big.id,
        None,
        Some("zone-b"),
        None,
        Some(&["gpu".to_string()]),
    )
    .await
    .unwrap();
    let c = AllocationConstraints {
        min_cpu_count: Some(8),
        ..Default::default()
    };
    assert_eq!(s.allocate(&c, u.id, "u").await.unwrap().id, big.id);
    let c = AllocationConstraints {
        min_memory_mib: Some(100_000),
        ..Default::default()
    };
    assert!(matches!(
        s.allocate(&c, u.id, "u").await,
        Err(StoreError::NoMatch)
    ));
    let c = AllocationConstraints {
        tags: vec!["gpu".into()],
        ..Default::default()
    };
    assert!(
        matches!(s.allocate(&c, u.id, "u").await, Err(StoreError::NoMatch)),
        "gpu one is taken"
    );
    let c = AllocationConstraints {
        hostname: Some("small".into()),
        zone: Some("default".into()),
        ..Default::default()
    };
    assert_eq!(s.allocate(&c, u.id, "u").await.unwrap().id, small.id);
}

async fn power_passwords_are_encrypted(db: &TestDb) {
    let s = &db.store;
    let m = s
        .create_machine(machine_with("p1", "52:54:00:00:04:01"), "test")
        .await
        .unwrap();
    let params = PowerParameters {
        power_address: Some("10.0.0.5".into()),
        power_user: Some("admin".into()),
        power_pass: Some("s3cret-pass".into()),
        power_driver: Some("LAN_2_0".into()),
        ..Default::default()
    };
    let m = s
        .set_power_parameters(&m.id, PowerType::Ipmi, &params, "test")
        .await
        .unwrap();
    assert_eq!(m.power_parameters.power_pass, None, "never returned");
    assert_eq!(m.power_parameters.power_user.as_deref(), Some("admin"));
    let (t, p) = s.power_credentials(&m.id).await.unwrap();
    assert_eq!(
        (t, p.power_pass.as_deref()),
        (PowerType::Ipmi, Some("s3cret-pass"))
    );
    // Changing other params without a password keeps the stored one.
    let p2 = PowerParameters {
        power_pass: None,
        ..params.clone()
    };
    s.set_power_parameters(&m.id, PowerType::Ipmi, &p2, "test")
        .await
        .unwrap();
    assert_eq!(
        s.power_credentials(&m.id)
            .await
            .unwrap()
            .1
            .power_pass
            .as_deref(),
        Some("s3cret-pass")
    );
    s.set_power_state(&m.id, PowerState::Error, Some("BMC unreachable"))
        .await
        .unwrap();
    let m = s.machine(&m.id).await.unwrap();
    assert_eq!(
        (m.power_state, m.power_error.as_deref()),
        (PowerState::Error, Some("BMC unreachable"))
    );
    assert!(!format!("{m:?}").contains("s3cret"));
}

async fn boot_tokens(db: &TestDb) {
    let s = &db.store;
    let m = s
        .create_machine(machine_with("b1", "52:54:00:00:05:01"), "test")
        .await
        .unwrap();
    let t1 = s.issue_boot_token(&m.id, 60_000).await.unwrap();
    assert_eq!(
        s.machine_by_boot_token(&t1).await.unwrap().unwrap().id,
        m.id
    );
    let t2 = s.issue_boot_token(&m.id, 60_000).await.unwrap();
    assert!(
        s.machine_by_boot_token(&t1).await.unwrap().is_none(),
        "a new boot revokes the old token"
    );
    assert!(s.machine_by_boot_token(&t2).await.unwrap().is_some());
    let expired = s.issue_boot_token(&m.id, -1).await.unwrap();
    assert!(s.machine_by_boot_token(&expired).await.unwrap().is_none());
    let t3 = s.issue_boot_token(&m.id, 60_000).await.unwrap();
    let eff = Effects {
        clear_boot_token: true,
        ..Default::default()
    };
    s.transition(&m.id, Trigger::Commission, "x", "", &eff)
        .await
        .unwrap();
    assert!(s.machine_by_boot_token(&t3).await.unwrap().is_none());
}

async fn leases_and_discoveries(db: &TestDb) {
    let s = &db.store;
    let l = |ip: &str, mac: &str| Lease {
        ip: ip.parse().unwrap(),
        mac: mac.into(),
        subnet: "10.0.0.0/24".into(),
        hostname: None,
        starts_at: 1,
        expires_at: 100,
        offered: false,
    };
    s.commit_leases(&[
        l("10.0.0.10", "aa:aa:aa:aa:aa:01"),
        l("10.0.0.11", "aa:aa:aa:aa:aa:02"),
    ])
    .await
    .unwrap();
    s.commit_leases(&[l("10.0.0.10", "aa:aa:aa:aa:aa:03")])
        .await
        .unwrap();
    let all = s.load_leases().await.unwrap();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].mac, "aa:aa:aa:aa:aa:03");
    s.remove_lease("10.0.0.11".parse().unwrap()).await.unwrap();
    assert_eq!(s.load_leases().await.unwrap().len(), 1);
    s.commit_leases(&[Lease {
        expires_at: 500,
        ..l("10.0.0.12", "aa:aa:aa:aa:aa:04")
    }])
    .await
    .unwrap();
    assert_eq!(
        s.purge_expired_leases(200).await.unwrap(),
        1,
        "only the lease expired at 100"
    );
    let left: Vec<_> = s
        .load_leases()
        .await
        .unwrap()
        .into_iter()
        .map(|l| l.ip.to_string())
        .collect();
    assert_eq!(left, ["10.0.0.12"]);

    let sight = |at| Sighting {
        mac: "aa:aa:aa:aa:aa:09".into(),
        ip: Some("10.0.0.50".parse().unwrap()),
        arch: Some("bios".into()),
        source: "dhcp".into(),
        at,
    };
    s.record_sighting(&sight(10)).await.unwrap();
    s.record_sighting(&Sighting {
        ip: None,
        arch: None,
        ..sight(20)
    })
    .await
    .unwrap();
    let d = s.discoveries().await.unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(
        (d[0].first_seen, d[0].last_seen, d[0].arch.as_deref()),
        (10, 20, Some("bios"))
    );
    assert_eq!(d[0].ip, Some("10.0.0.50".parse().unwrap()));
    assert_eq!(d[0].machine_id, None);
}

async fn list_filters(db: &TestDb) {
    let s = &db.store;
    let u = s.create_user("viewer", false).await.unwrap();
    let other = s.create_user("other", false).await.unwrap();
    let a = ready_machine(s, "fa", "52:54:00:00:06:01", 2, 2048).await;
    let b = s
        .create_machine(machine_with("fb", "52:54:00:00:06:02"), "t")
        .await
        .unwrap();
    let c = ready_machine(s, "fc", "52:54:00:00:06:03", 2, 2048).await;
    let cc = AllocationConstraints {
        system_id: Some(c.id.to_string()),
        ..Default::default()
    };
    s.allocate(&cc, other.id, "other").await.unwrap();
    let ids =
        |v: Vec<ingot_types::machine::Machine>| v.into_iter().map(|m| m.id).collect::<Vec<_>>();
    let all = ids(s.list_machines(&MachineFilter::default()).await.unwrap());
    // Listed in creation order; machines created in the same millisecond tie-break by id,
    // so compare as a set and check paging against the listed order.
    let set = |v: &[ingot_types::MachineId]| v.iter().cloned().collect::<HashSet<_>>();
    assert_eq!(set(&all), set(&[a.id.clone(), b.id.clone(), c.id.clone()]));
    let ready = s
        .list_machines(&MachineFilter {
            statuses: vec![NodeStatus::Ready],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(ready), vec![a.id.clone()]);
    let by_host = s
        .list_machines(&MachineFilter {
            hostnames: vec!["fb".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(by_host), vec![b.id.clone()]);
    let visible = s
        .list_machines(&MachineFilter {
            visible_to: Some(u.id),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(
        set(&ids(visible)),
        set(&[a.id.clone(), b.id.clone()]),
        "other's machine hidden"
    );
    let by_mac = s
        .list_machines(&MachineFilter {
            mac: Some("52:54:00:00:06:02".into()),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(by_mac), vec![b.id.clone()]);
    let page = s
        .list_machines(&MachineFilter {
            limit: Some(1),
            offset: Some(1),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(ids(page), vec![all[1].clone()]);
}
