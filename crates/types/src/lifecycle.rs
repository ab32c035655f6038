//! The machine lifecycle: MAAS's 23 node statuses and the triggers that move between them.
//!
//! Two layers, both pure:
//! - [`is_legal_transition`] is MAAS's own `NODE_TRANSITIONS` table (maasserver/node_status.py):
//!   the set of edges any status change must belong to.
//! - [`next_status`] decides what a [`Trigger`] (an operator action, an agent report, a timeout)
//!   does in a given status. Every edge it can produce is in the legal table; the property tests
//!   at the bottom check that for random trigger sequences.

use serde::{Deserialize, Serialize};
use std::fmt;

/// MAAS node statuses with their numeric codes (`status` in MAAS JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "i32", into = "i32")]
#[repr(i32)]
pub enum NodeStatus {
    New = 0,
    Commissioning = 1,
    FailedCommissioning = 2,
    Missing = 3,
    Ready = 4,
    Reserved = 5,
    Deployed = 6,
    Retired = 7,
    Broken = 8,
    Deploying = 9,
    Allocated = 10,
    FailedDeployment = 11,
    Releasing = 12,
    FailedReleasing = 13,
    DiskErasing = 14,
    FailedDiskErasing = 15,
    RescueMode = 16,
    EnteringRescueMode = 17,
    FailedEnteringRescueMode = 18,
    ExitingRescueMode = 19,
    FailedExitingRescueMode = 20,
    Testing = 21,
    FailedTesting = 22,
}

use NodeStatus::*;

impl NodeStatus {
    pub const ALL: [NodeStatus; 23] = [
        New,
        Commissioning,
        FailedCommissioning,
        Missing,
        Ready,
        Reserved,
        Deployed,
        Retired,
        Broken,
        Deploying,
        Allocated,
        FailedDeployment,
        Releasing,
        FailedReleasing,
        DiskErasing,
        FailedDiskErasing,
        RescueMode,
        EnteringRescueMode,
        FailedEnteringRescueMode,
        ExitingRescueMode,
        FailedExitingRescueMode,
        Testing,
        FailedTesting,
    ];

    pub fn code(self) -> i32 {
        self as i32
    }

    pub fn from_code(code: i32) -> Option<Self> {
        Self::ALL.get(usize::try_from(code).ok()?).copied()
    }

    /// The exact `status_name` MAAS returns (NODE_STATUS_CHOICES; note "Releasing failed").
    pub fn name(self) -> &'static str {
        match self {
            New => "New",
            Commissioning => "Commissioning",
            FailedCommissioning => "Failed commissioning",
            Missing => "Missing",
            Ready => "Ready",
            Reserved => "Reserved",
            Deployed => "Deployed",
            Retired => "Retired",
            Broken => "Broken",
            Deploying => "Deploying",
            Allocated => "Allocated",
            FailedDeployment => "Failed deployment",
            Releasing => "Releasing",
            FailedReleasing => "Releasing failed",
            DiskErasing => "Disk erasing",
            FailedDiskErasing => "Failed disk erasing",
            RescueMode => "Rescue mode",
            EnteringRescueMode => "Entering rescue mode",
            FailedEnteringRescueMode => "Failed to enter rescue mode",
            ExitingRescueMode => "Exiting rescue mode",
            FailedExitingRescueMode => "Failed to exit rescue mode",
            Testing => "Testing",
            FailedTesting => "Failed testing",
        }
    }

    /// Parses a status by its `status_name` (case-insensitive) or by a snake/kebab-case
    /// variant such as `failed_commissioning`, for API filters.
    pub fn parse_name(s: &str) -> Option<Self> {
        let norm = |x: &str| x.to_ascii_lowercase().replace(['_', '-', ' '], "");
        let want = norm(s);
        Self::ALL
            .into_iter()
            .find(|st| norm(st.name()) == want || norm(&format!("{st:?}")) == want)
    }

    /// Statuses in which a workflow is running and a deadline applies.
    pub fn is_in_progress(self) -> bool {
        matches!(
            self,
            Commissioning
                | Deploying
                | Releasing
                | DiskErasing
                | EnteringRescueMode
                | ExitingRescueMode
                | Testing
        )
    }

    /// Statuses in which the machine belongs to a user.
    pub fn is_owned(self) -> bool {
        matches!(
            self,
            Allocated | Deploying | Deployed | FailedDeployment | Releasing | FailedReleasing
        ) || self == DiskErasing
    }
}

impl TryFrom<i32> for NodeStatus {
    type Error = String;
    fn try_from(code: i32) -> Result<Self, String> {
        Self::from_code(code).ok_or_else(|| format!("unknown node status code {code}"))
    }
}

impl From<NodeStatus> for i32 {
    fn from(s: NodeStatus) -> i32 {
        s.code()
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// MAAS's NODE_TRANSITIONS: `from → to` is allowed when `to` is in the list for `from`.
pub fn is_legal_transition(from: NodeStatus, to: NodeStatus) -> bool {
    let allowed: &[NodeStatus] = match from {
        New => &[
            Commissioning,
            Testing,
            Missing,
            Ready,
            Retired,
            Broken,
            EnteringRescueMode,
        ],
        Commissioning => &[
            FailedCommissioning,
            Ready,
            Retired,
            Missing,
            New,
            Broken,
            Testing,
        ],
        FailedCommissioning => &[
            Commissioning,
            Missing,
            Retired,
            Broken,
            EnteringRescueMode,
            Testing,
        ],
        Ready => &[
            EnteringRescueMode,
            Commissioning,
            Allocated,
            Reserved,
            Retired,
            Missing,
            Broken,
            Testing,
        ],
        Reserved => &[
            Ready,
            Allocated,
            Retired,
            Missing,
            Broken,
            DiskErasing,
            Releasing,
            EnteringRescueMode,
            Testing,
        ],
        Allocated => &[
            Ready,
            Retired,
            Missing,
            Broken,
            Deploying,
            DiskErasing,
            Releasing,
            EnteringRescueMode,
            Testing,
        ],
        Deploying => &[
            Allocated,
            Missing,
            Broken,
            FailedDeployment,
            Deployed,
            Ready,
            DiskErasing,
            Releasing,
        ],
        FailedDeployment => &[
            Allocated,
            Missing,
            Broken,
            Ready,
            DiskErasing,
            Releasing,
            EnteringRescueMode,
            Testing,
        ],
        Deployed => &[
            Allocated,
            Missing,
            Broken,
            Ready,
            DiskErasing,
            Releasing,
            EnteringRescueMode,
            Testing,
        ],
        Releasing => &[
            New,
            Allocated,
            Reserved,
            Deployed,
            Ready,
            Broken,
            Missing,
            FailedDeployment,
            FailedDiskErasing,
            FailedReleasing,
        ],
        FailedReleasing => &[Releasing, DiskErasing, Ready, Broken, Testing],
        DiskErasing => &[Broken, DiskErasing, FailedDiskErasing, Ready, Releasing],
        FailedDiskErasing => &[
            DiskErasing,
            Releasing,
            Broken,
            Allocated,
            Ready,
            EnteringRescueMode,
            Testing,
        ],
        Missing => &[
            New,
            Ready,
            Allocated,
            Commissioning,
            Broken,
            EnteringRescueMode,
            Testing,
        ],
        Retired => &[New, Ready, Missing, Broken, EnteringRescueMode, Testing],
        Broken => &[
            Commissioning,
            Ready,
            DiskErasing,
            Releasing,
            EnteringRescueMode,
            Testing,
            Deployed,
        ],
        EnteringRescueMode => &[
            Ready,
            Broken,
            Deployed,
            RescueMode,
            FailedEnteringRescueMode,
            ExitingRescueMode,
        ],
        FailedEnteringRescueMode => &[Broken, EnteringRescueMode, ExitingRescueMode, Testing],
        RescueMode => &[Broken, ExitingRescueMode, Testing],
        ExitingRescueMode => &[
            New,
            Broken,
            FailedCommissioning,
            Ready,
            Reserved,
            Allocated,
            FailedDeployment,
            Deployed,
            Missing,
            Retired,
            FailedReleasing,
            FailedDiskErasing,
            RescueMode,
            FailedEnteringRescueMode,
            FailedExitingRescueMode,
            FailedTesting,
        ],
        FailedExitingRescueMode => &[Broken, ExitingRescueMode, Testing],
        Testing => &[
            Broken,
            New,
            Ready,
            Reserved,
            Allocated,
            Deployed,
            Commissioning,
            FailedDeployment,
            Missing,
            Retired,
            FailedReleasing,
            FailedDiskErasing,
            FailedEnteringRescueMode,
            FailedExitingRescueMode,
            FailedTesting,
        ],
        FailedTesting => &[
            Commissioning,
            Broken,
            Missing,
            EnteringRescueMode,
            Testing,
            Ready,
            Deployed,
        ],
    };
    allowed.contains(&to)
}

/// What can move a machine: an operator's action, an agent's report, or the engine noticing
/// that a deadline passed or that the BMC confirmed a power change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Trigger {
    Commission,
    Allocate,
    Deploy,
    /// Release; with `erase` the disks are wiped first.
    Release {
        erase: bool,
    },
    Abort,
    MarkBroken,
    MarkFixed,
    /// The agent reported successful commissioning (inventory stored).
    CommissioningSucceeded,
    CommissioningFailed,
    DeploySucceeded,
    DeployFailed,
    /// Power-off confirmed after a release.
    ReleaseSucceeded,
    ReleaseFailed,
    EraseSucceeded,
    EraseFailed,
    /// The in-progress workflow's deadline passed.
    TimedOut,
}

impl Trigger {
    /// The API verbs (native `actions/{name}`); agent and engine triggers have none.
    pub fn from_action_name(name: &str) -> Option<Trigger> {
        Some(match name {
            "commission" => Trigger::Commission,
            "allocate" => Trigger::Allocate,
            "deploy" => Trigger::Deploy,
            "release" => Trigger::Release { erase: false },
            "abort" => Trigger::Abort,
            "mark-broken" | "mark_broken" => Trigger::MarkBroken,
            "mark-fixed" | "mark_fixed" => Trigger::MarkFixed,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Trigger::Commission => "commission",
            Trigger::Allocate => "allocate",
            Trigger::Deploy => "deploy",
            Trigger::Release { erase: false } => "release",
            Trigger::Release { erase: true } => "release (erase)",
            Trigger::Abort => "abort",
            Trigger::MarkBroken => "mark-broken",
            Trigger::MarkFixed => "mark-fixed",
            Trigger::CommissioningSucceeded => "commissioning succeeded",
            Trigger::CommissioningFailed => "commissioning failed",
            Trigger::DeploySucceeded => "deploy succeeded",
            Trigger::DeployFailed => "deploy failed",
            Trigger::ReleaseSucceeded => "release succeeded",
            Trigger::ReleaseFailed => "release failed",
            Trigger::EraseSucceeded => "erase succeeded",
            Trigger::EraseFailed => "erase failed",
            Trigger::TimedOut => "timed out",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} a machine that is {current}", trigger.name())]
pub struct IllegalTransition {
    pub current: NodeStatus,
    pub trigger: Trigger,
}

/// Decides the status a trigger leads to. Pure; the caller records the event and applies it
/// atomically (compare-and-set on the current status).
pub fn next_status(current: NodeStatus, trigger: Trigger) -> Result<NodeStatus, IllegalTransition> {
    let illegal = || IllegalTransition { current, trigger };
    let next = match (trigger, current) {
        (
            Trigger::Commission,
            New | Ready | FailedCommissioning | Broken | FailedTesting | Missing,
        ) => Commissioning,
        (Trigger::CommissioningSucceeded, Commissioning) => Ready,
        (Trigger::CommissioningFailed | Trigger::TimedOut, Commissioning) => FailedCommissioning,
        (Trigger::Allocate, Ready) => Allocated,
        (Trigger::Deploy, Allocated) => Deploying,
        (Trigger::DeploySucceeded, Deploying) => Deployed,
        (Trigger::DeployFailed | Trigger::TimedOut, Deploying) => FailedDeployment,
        (
            Trigger::Release { erase: false },
            Allocated | Deploying | Deployed | FailedDeployment | Reserved | FailedReleasing
            | FailedDiskErasing,
        ) => Releasing,
        (
            Trigger::Release { erase: true },
            Allocated | Deploying | Deployed | FailedDeployment | Reserved | FailedReleasing
            | FailedDiskErasing,
        ) => DiskErasing,
        (Trigger::ReleaseSucceeded, Releasing) => Ready,
        (Trigger::ReleaseFailed | Trigger::TimedOut, Releasing) => FailedReleasing,
        (Trigger::EraseSucceeded, DiskErasing) => Ready,
        (Trigger::EraseFailed | Trigger::TimedOut, DiskErasing) => FailedDiskErasing,
        (Trigger::Abort, Commissioning) => New,
        (Trigger::Abort, Deploying) => Allocated,
        (Trigger::Abort, DiskErasing) => FailedDiskErasing,
        (Trigger::Abort, Testing) => Ready,
        (Trigger::TimedOut, Testing) => FailedTesting,
        (Trigger::TimedOut, EnteringRescueMode) => FailedEnteringRescueMode,
        (Trigger::TimedOut, ExitingRescueMode) => FailedExitingRescueMode,
        (Trigger::MarkBroken, s) if s != Broken && is_legal_transition(s, Broken) => Broken,
        (Trigger::MarkFixed, Broken) => Ready,
        _ => return Err(illegal()),
    };
    debug_assert!(
        is_legal_transition(current, next),
        "{current:?} -> {next:?}"
    );
    Ok(next)
}

/// Statuses a machine may be created in.
pub fn is_legal_initial(status: NodeStatus) -> bool {
    matches!(status, New | Missing | Retired)
}

/// Who caused a status change, for the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransitionEvent {
    pub at: chrono::DateTime<chrono::Utc>,
    pub actor: String,
    pub from: Option<NodeStatus>,
    pub to: NodeStatus,
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn codes_and_names_match_maas() {
        let expected = [
            (0, "New"),
            (1, "Commissioning"),
            (2, "Failed commissioning"),
            (3, "Missing"),
            (4, "Ready"),
            (5, "Reserved"),
            (6, "Deployed"),
            (7, "Retired"),
            (8, "Broken"),
            (9, "Deploying"),
            (10, "Allocated"),
            (11, "Failed deployment"),
            (12, "Releasing"),
            (13, "Releasing failed"),
            (14, "Disk erasing"),
            (15, "Failed disk erasing"),
            (16, "Rescue mode"),
            (17, "Entering rescue mode"),
            (18, "Failed to enter rescue mode"),
            (19, "Exiting rescue mode"),
            (20, "Failed to exit rescue mode"),
            (21, "Testing"),
            (22, "Failed testing"),
        ];
        assert_eq!(NodeStatus::ALL.len(), expected.len());
        for (code, name) in expected {
            let s = NodeStatus::from_code(code).unwrap();
            assert_eq!((s.code(), s.name()), (code, name));
            assert_eq!(NodeStatus::parse_name(name), Some(s));
        }
        assert_eq!(NodeStatus::from_code(23), None);
        assert_eq!(NodeStatus::from_code(-1), None);
        assert_eq!(
            NodeStatus::parse_name("failed_commissioning"),
            Some(FailedCommissioning)
        );
        assert_eq!(NodeStatus::parse_name("nonsense"), None);
    }

    /// The happy paths and the refusals an operator meets, as data: (from, trigger, expected).
    #[test]
    fn next_status_table() {
        let rel = Trigger::Release { erase: false };
        let erase = Trigger::Release { erase: true };
        let cases: &[(NodeStatus, Trigger, Option<NodeStatus>)] = &[
            (New, Trigger::Commission, Some(Commissioning)),
            (Commissioning, Trigger::CommissioningSucceeded, Some(Ready)),
            (
                Commissioning,
                Trigger::CommissioningFailed,
                Some(FailedCommissioning),
            ),
            (Commissioning, Trigger::TimedOut, Some(FailedCommissioning)),
            (Commissioning, Trigger::Abort, Some(New)),
            (
                FailedCommissioning,
                Trigger::Commission,
                Some(Commissioning),
            ),
            (Ready, Trigger::Commission, Some(Commissioning)),
            (Ready, Trigger::Allocate, Some(Allocated)),
            (Allocated, Trigger::Deploy, Some(Deploying)),
            (Deploying, Trigger::DeploySucceeded, Some(Deployed)),
            (Deploying, Trigger::DeployFailed, Some(FailedDeployment)),
            (Deploying, Trigger::TimedOut, Some(FailedDeployment)),
            (Deploying, Trigger::Abort, Some(Allocated)),
            (Deployed, rel, Some(Releasing)),
            (Deployed, erase, Some(DiskErasing)),
            (Allocated, rel, Some(Releasing)),
            (FailedDeployment, rel, Some(Releasing)),
            (Releasing, Trigger::ReleaseSucceeded, Some(Ready)),
            (Releasing, Trigger::TimedOut, Some(FailedReleasing)),
            (FailedReleasing, rel, Some(Releasing)),
            (DiskErasing, Trigger::EraseSucceeded, Some(Ready)),
            (DiskErasing, Trigger::EraseFailed, Some(FailedDiskErasing)),
            (Ready, Trigger::MarkBroken, Some(Broken)),
            (Deployed, Trigger::MarkBroken, Some(Broken)),
            (Broken, Trigger::MarkFixed, Some(Ready)),
            (Broken, Trigger::Commission, Some(Commissioning)),
            // refusals
            (New, Trigger::Allocate, None),
            (New, Trigger::Deploy, None),
            (Ready, Trigger::Deploy, None),
            (Ready, rel, None),
            (Deployed, Trigger::Deploy, None),
            (Deployed, Trigger::Commission, None),
            (Allocated, Trigger::Allocate, None),
            (Commissioning, Trigger::Commission, None),
            (Broken, Trigger::MarkBroken, None),
            (Ready, Trigger::MarkFixed, None),
            (Ready, Trigger::Abort, None),
            (Ready, Trigger::CommissioningSucceeded, None),
            (Deployed, Trigger::DeploySucceeded, None),
            (Ready, Trigger::TimedOut, None),
        ];
        for &(from, trigger, want) in cases {
            let got = next_status(from, trigger).ok();
            assert_eq!(got, want, "{from:?} + {trigger:?}");
        }
        let err = next_status(Deployed, Trigger::Deploy).unwrap_err();
        assert_eq!(err.to_string(), "cannot deploy a machine that is Deployed");
    }

    #[test]
    fn every_produced_edge_is_legal_in_maas_table() {
        // Exhaustive over all statuses and all triggers.
        for from in NodeStatus::ALL {
            for trigger in all_triggers() {
                if let Ok(to) = next_status(from, trigger) {
                    assert!(
                        is_legal_transition(from, to),
                        "{from:?} -{trigger:?}-> {to:?}"
                    );
                }
            }
        }
    }

    fn all_triggers() -> Vec<Trigger> {
        vec![
            Trigger::Commission,
            Trigger::Allocate,
            Trigger::Deploy,
            Trigger::Release { erase: false },
            Trigger::Release { erase: true },
            Trigger::Abort,
            Trigger::MarkBroken,
            Trigger::MarkFixed,
            Trigger::CommissioningSucceeded,
            Trigger::CommissioningFailed,
            Trigger::DeploySucceeded,
            Trigger::DeployFailed,
            Trigger::ReleaseSucceeded,
            Trigger::ReleaseFailed,
            Trigger::EraseSucceeded,
            Trigger::EraseFailed,
            Trigger::TimedOut,
        ]
    }

    fn trigger_strategy() -> impl Strategy<Value = Trigger> {
        proptest::sample::select(all_triggers())
    }

    proptest! {
        /// Random action sequences from New never reach an illegal state: every accepted step
        /// is a MAAS-legal edge, a refused step leaves the status unchanged, and the error
        /// carries the current status.
        #[test]
        fn random_sequences_stay_legal(seq in proptest::collection::vec(trigger_strategy(), 0..200)) {
            let mut status = New;
            for trigger in seq {
                match next_status(status, trigger) {
                    Ok(next) => {
                        prop_assert!(is_legal_transition(status, next));
                        status = next;
                    }
                    Err(e) => prop_assert_eq!(e.current, status),
                }
                prop_assert!(NodeStatus::ALL.contains(&status));
            }
        }

        /// From anywhere reachable, the machine can always get back to Ready (no dead ends).
        #[test]
        fn ready_is_always_reachable(seq in proptest::collection::vec(trigger_strategy(), 0..60)) {
            let mut status = New;
            for trigger in seq {
                if let Ok(next) = next_status(status, trigger) { status = next; }
            }
            let recovery = [
                Trigger::Abort, Trigger::TimedOut, Trigger::MarkBroken, Trigger::MarkFixed,
            ];
            for t in recovery {
                if status == Ready { break; }
                if let Ok(next) = next_status(status, t) { status = next; }
            }
            prop_assert_eq!(status, Ready);
        }
    }
}
