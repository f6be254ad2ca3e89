//! Mesh roots over time: rotation to a new root with an overlap window.
//!
//! A rotation adds a root that *activates* later. Until then the old root
//! still signs and both are trusted, so every proxy learns the new root (its
//! snapshot carries the bundle) before any certificate from it exists. From
//! the activation the new root signs; the old one stays trusted until every
//! certificate it signed has expired (activation + certificate lifetime + a
//! margin), then it is dropped. Proxies renew at two thirds of a lifetime, so
//! by then all of them hold new certificates and no handshake breaks.
//!
//! The schedule is stored (roots, keys, activation times) and the phase is a
//! pure function of it and the clock ([`Schedule::phase`]): every replica, and
//! every restart, reaches the same answer, and only `rotate-ca` writes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use phoenix_api::secret::Secret;
use serde::{Deserialize, Serialize};

use crate::ca::{Ca, CaError};

/// The stored schedule in the state directory (file mode); when present it,
/// not `ca.crt`/`ca.key`, says which roots exist.
pub const ROOTS_FILE: &str = "roots.json";
/// The trust bundle the control plane writes for local proxies to bootstrap
/// with (`--trust-anchor`): every root trusted now.
pub const BUNDLE_FILE: &str = "trust-bundle.crt";

/// Why a schedule cannot be loaded, stored or rotated.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// The file cannot be read or written.
    #[error("cannot read or write {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The stored schedule is not valid JSON of the expected shape.
    #[error("{what} is not a valid root schedule; restore it from a backup")]
    Format {
        /// Where it came from.
        what: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The schedule lists no root.
    #[error("{what} lists no root; restore it from a backup")]
    Empty {
        /// Where it came from.
        what: String,
    },
    /// Activation times do not increase.
    #[error("{what}: roots must be listed in order of activation, each later than the last")]
    Unordered {
        /// Where it came from.
        what: String,
    },
    /// A stored root or key is unusable.
    #[error("{what}: root {index} is unusable")]
    BadRoot {
        /// Where it came from.
        what: String,
        /// Its position.
        index: usize,
        /// Why.
        #[source]
        source: CaError,
    },
    /// A rotation is already announced.
    #[error(
        "a rotation is already in progress: the new root activates in {}s; wait for it, then rotate again",
        .remaining.as_secs()
    )]
    Pending {
        /// Until the announced root activates.
        remaining: Duration,
    },
    /// A new root cannot be generated.
    #[error("cannot generate a new root")]
    Generate(#[source] CaError),
    /// An activation time is out of range.
    #[error("{what}: root {index} activates at an impossible time; restore the file from a backup")]
    BadTime {
        /// Where it came from.
        what: String,
        /// Its position.
        index: usize,
    },
    /// The overlap is out of range.
    #[error("an overlap of {}s is out of range; use at most a year", .overlap.as_secs())]
    Overlap {
        /// The overlap asked for.
        overlap: Duration,
    },
    /// The schedule cannot be encoded (never in practice).
    #[error("cannot encode the root schedule")]
    Encode(#[source] serde_json::Error),
    /// A reloaded schedule would sign with a root proxies were never told about.
    #[error(
        "the new schedule signs with a root that was not announced; rotate with `rotate-ca`, or restart the control plane to force it"
    )]
    Unannounced,
}

/// Longest overlap `rotate-ca` accepts.
const MAX_OVERLAP: Duration = Duration::from_secs(366 * 24 * 3600);
/// Latest activation time a stored schedule may name (year 9999).
const MAX_UNIX: u64 = 253_402_300_799;

/// One root as stored.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct StoredRoot {
    cert_pem: String,
    key_pem: Secret,
    /// Unix seconds from which this root signs.
    activates_at: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Stored {
    roots: Vec<StoredRoot>,
}

/// A root and when it starts signing.
#[derive(Clone, Debug)]
pub struct Scheduled {
    /// The root and its key.
    pub ca: Arc<Ca>,
    /// From when it signs.
    pub activates_at: SystemTime,
}

/// Every root the mesh has, oldest first.
#[derive(Clone, Debug)]
pub struct Schedule {
    roots: Vec<Scheduled>,
}

/// What the roots mean at one moment.
#[derive(Clone, Debug)]
pub struct Phase {
    /// The root that signs.
    pub signer: Arc<Ca>,
    /// The roots trusted (PEM bundle, signer first, then announced, then retiring).
    pub bundle: String,
    /// How many roots the bundle holds.
    pub trusted: usize,
    /// When the phase changes next (an activation or a retirement).
    pub next_change: Option<SystemTime>,
}

impl Phase {
    /// What proxies are told of the roots in this phase.
    pub fn trust_roots(&self) -> TrustRoots {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let all_post_quantum = CertificateDer::pem_slice_iter(self.bundle.as_bytes()).all(|c| {
            c.ok()
                .and_then(|c| phoenix_tls::spiffe::key_algorithm(&c))
                .is_some_and(|a| a.is_post_quantum())
        });
        TrustRoots {
            bundle: self.bundle.clone(),
            signing: self.signer.algorithm(),
            all_post_quantum,
        }
    }
}

/// The roots as every proxy's snapshot carries them: the bundle to trust,
/// and the algorithm of the root that signs now (so proxies generate keys
/// of it: how a mesh moves from ECDSA P-256 to ML-DSA-65).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrustRoots {
    /// The PEM bundle (signer first).
    pub bundle: String,
    /// The signing root's algorithm.
    pub signing: phoenix_api::tls_policy::IdentityAlgorithm,
    /// Whether every trusted root is post-quantum (ML-DSA).
    pub all_post_quantum: bool,
}

impl TrustRoots {
    /// The authentication policy in force for a configured one: `pq-only`
    /// only once every trusted root is ML-DSA. Before that (a mesh set to
    /// `ml-dsa-65` and `pq-only` whose P-256 root still signs, or is still
    /// trusted during a rotation's overlap) it would refuse every
    /// certificate the mesh holds and every CSR its proxies can make, so it
    /// waits, and the control plane says so.
    pub fn effective(
        roots: Option<&Self>,
        configured: phoenix_api::tls_policy::AuthPolicy,
    ) -> phoenix_api::tls_policy::AuthPolicy {
        use phoenix_api::tls_policy::AuthPolicy;
        match (configured, roots) {
            (AuthPolicy::PqOnly, Some(r)) if r.all_post_quantum => AuthPolicy::PqOnly,
            _ => AuthPolicy::Any,
        }
    }
}

/// How long a retired root stays trusted past the last certificate it
/// signed: absorbs clock differences between nodes.
fn margin(lifetime: Duration) -> Duration {
    (lifetime / 10).clamp(Duration::from_secs(1), Duration::from_secs(60))
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

impl Schedule {
    /// A schedule of one root, signing since forever (no rotation yet).
    pub fn single(ca: Arc<Ca>) -> Self {
        Self {
            roots: vec![Scheduled {
                ca,
                activates_at: UNIX_EPOCH,
            }],
        }
    }

    /// The roots, oldest first.
    pub fn roots(&self) -> &[Scheduled] {
        &self.roots
    }

    /// The phase at `now` for certificates of `lifetime`.
    pub fn phase(&self, now: SystemTime, lifetime: Duration) -> Phase {
        let signer = self
            .roots
            .iter()
            .rposition(|r| r.activates_at <= now)
            .unwrap_or(0);
        let mut changes = Vec::new();
        let mut bundle = vec![&self.roots[signer]];
        // Announced roots: trusted before they sign.
        for r in &self.roots[signer + 1..] {
            bundle.push(r);
            changes.push(r.activates_at);
        }
        // Older roots: trusted until what they signed has expired.
        for (i, r) in self.roots[..signer].iter().enumerate().rev() {
            let until = self.roots[i + 1].activates_at + lifetime + margin(lifetime);
            if now < until {
                bundle.push(r);
                changes.push(until);
            }
        }
        Phase {
            signer: self.roots[signer].ca.clone(),
            trusted: bundle.len(),
            bundle: bundle
                .iter()
                .map(|r| {
                    let pem = r.ca.root_pem();
                    if pem.ends_with('\n') {
                        pem.to_owned()
                    } else {
                        format!("{pem}\n")
                    }
                })
                .collect(),
            next_change: changes.into_iter().min(),
        }
    }

    /// The schedule with `new` announced now, signing `overlap` later; roots
    /// already retired at `now` are dropped. Refused while another rotation
    /// is announced and not active yet.
    pub fn rotate(
        &self,
        now: SystemTime,
        overlap: Duration,
        lifetime: Duration,
        new: Ca,
    ) -> Result<Self, RootsError> {
        if let Some(pending) = self.roots.iter().find(|r| r.activates_at > now) {
            return Err(RootsError::Pending {
                remaining: pending.activates_at.duration_since(now).unwrap_or_default(),
            });
        }
        let trusted = self.phase(now, lifetime).bundle;
        let mut roots: Vec<Scheduled> = self
            .roots
            .iter()
            .filter(|r| trusted.contains(r.ca.root_pem()))
            .cloned()
            .collect();
        // Whole seconds, as stored, and always after the current signer.
        let at = now
            .checked_add(overlap)
            .filter(|_| overlap <= MAX_OVERLAP)
            .ok_or(RootsError::Overlap { overlap })?;
        let at = UNIX_EPOCH + Duration::from_secs(unix(at).max(unix(now) + 1));
        roots.push(Scheduled {
            ca: Arc::new(new),
            activates_at: at,
        });
        Ok(Self { roots })
    }

    /// Parses a stored schedule; `what` names its origin in errors.
    pub fn from_json(json: &[u8], what: &str) -> Result<Self, RootsError> {
        let stored: Stored = serde_json::from_slice(json).map_err(|source| RootsError::Format {
            what: what.to_owned(),
            source,
        })?;
        if stored.roots.is_empty() {
            return Err(RootsError::Empty {
                what: what.to_owned(),
            });
        }
        if stored
            .roots
            .windows(2)
            .any(|w| w[0].activates_at >= w[1].activates_at)
        {
            return Err(RootsError::Unordered {
                what: what.to_owned(),
            });
        }
        let roots = stored
            .roots
            .into_iter()
            .enumerate()
            .map(|(index, r)| {
                let StoredRoot {
                    cert_pem,
                    key_pem,
                    activates_at,
                } = r;
                let ca = Ca::from_pem(&cert_pem, key_pem.expose()).map_err(|source| {
                    RootsError::BadRoot {
                        what: what.to_owned(),
                        index,
                        source,
                    }
                })?;
                Ok(Scheduled {
                    ca: Arc::new(ca),
                    activates_at: UNIX_EPOCH
                        .checked_add(Duration::from_secs(activates_at))
                        .filter(|_| activates_at <= MAX_UNIX)
                        .ok_or(RootsError::BadTime {
                            what: what.to_owned(),
                            index,
                        })?,
                })
            })
            .collect::<Result<_, RootsError>>()?;
        Ok(Self { roots })
    }

    /// Whether moving from `self` to `next` keeps every handshake working:
    /// the root that signs after the move must be one proxies trust now.
    pub fn check_successor(
        &self,
        next: &Schedule,
        now: SystemTime,
        lifetime: Duration,
    ) -> Result<(), RootsError> {
        let trusted = self.phase(now, lifetime).bundle;
        if trusted.contains(next.phase(now, lifetime).signer.root_pem()) {
            Ok(())
        } else {
            Err(RootsError::Unannounced)
        }
    }

    /// The stored form (holds the keys: keep it private).
    pub fn to_json(&self) -> Result<Vec<u8>, RootsError> {
        let stored = Stored {
            roots: self
                .roots
                .iter()
                .map(|r| StoredRoot {
                    cert_pem: r.ca.root_pem().to_owned(),
                    key_pem: r.ca.key_pem().into(),
                    activates_at: unix(r.activates_at),
                })
                .collect(),
        };
        serde_json::to_vec_pretty(&stored).map_err(RootsError::Encode)
    }

    /// The schedule in `dir` (`roots.json`), else the single root `ca`.
    pub fn load(dir: &Path, ca: Arc<Ca>) -> Result<Self, RootsError> {
        let path = dir.join(ROOTS_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => Self::from_json(&bytes, &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::single(ca)),
            Err(source) => Err(RootsError::Io { path, source }),
        }
    }

    /// Stores the schedule in `dir` atomically (a reader sees the old or the
    /// new file, never half of one), readable by the owner only.
    pub fn save(&self, dir: &Path) -> Result<(), RootsError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(ROOTS_FILE);
        let tmp = dir.join(format!(".{ROOTS_FILE}.tmp"));
        let io = |source| RootsError::Io {
            path: path.clone(),
            source,
        };
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io)?;
        f.write_all(&self.to_json()?).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
        // The rename itself is durable only once the directory is synced.
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io)
    }
}

/// How long one re-read of the stored schedule may take.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(10);

/// Publishes the phase of `schedule` on `phases` as time passes, taking a
/// new schedule whenever `reload` yields one (a `rotate-ca` wrote it).
/// `lifetime` is the certificate lifetime in force; `poll` bounds how late
/// a new schedule is noticed.
pub async fn drive<F>(
    mut schedule: Schedule,
    mut reload: impl FnMut() -> F,
    lifetime: impl Fn() -> Duration,
    phases: tokio::sync::watch::Sender<Phase>,
    poll: Duration,
) where
    F: std::future::Future<Output = Option<Schedule>>,
{
    loop {
        let now = SystemTime::now();
        let phase = schedule.phase(now, lifetime());
        let wait = phase.next_change.map_or(poll, |t| {
            t.duration_since(now).unwrap_or_default().min(poll)
        });
        phases.send_if_modified(|current| {
            let changed =
                current.bundle != phase.bundle || !Arc::ptr_eq(&current.signer, &phase.signer);
            if changed {
                tracing::info!(
                    trusted = phase.trusted,
                    signer = %phase.signer.name(),
                    "mesh roots changed"
                );
                *current = phase;
            }
            changed
        });
        // Whole-second activation times: never spin on a change just due.
        tokio::time::sleep(wait.max(Duration::from_millis(20))).await;
        // A hung reload (an API server that does not answer) must not hold
        // back a due activation or retirement.
        let Ok(reloaded) = tokio::time::timeout(RELOAD_TIMEOUT, reload()).await else {
            tracing::warn!("re-reading the root schedule timed out; keeping the one in force");
            continue;
        };
        if let Some(next) = reloaded {
            match schedule.check_successor(&next, SystemTime::now(), lifetime()) {
                Ok(()) => {
                    tracing::info!(roots = next.roots.len(), "root schedule reloaded");
                    schedule = next;
                }
                Err(error) => {
                    tracing::error!(%error, "root schedule refused; keeping the one in force")
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn t(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + secs)
    }

    fn names(phase: &Phase, schedule: &Schedule) -> Vec<usize> {
        schedule
            .roots()
            .iter()
            .enumerate()
            .filter(|(_, r)| phase.bundle.contains(r.ca.root_pem()))
            .map(|(i, _)| i)
            .collect()
    }

    #[test]
    fn pq_only_is_in_force_only_once_every_trusted_root_is_ml_dsa() {
        use phoenix_api::tls_policy::{AuthPolicy, IdentityAlgorithm};
        let p256 = Schedule::single(Arc::new(Ca::generate("td").unwrap()));
        let two = p256
            .rotate(
                t(0),
                HOUR,
                HOUR,
                Ca::generate_with("td", IdentityAlgorithm::MlDsa65).unwrap(),
            )
            .unwrap();
        let in_force = |at: u64| {
            let roots = two.phase(t(at), HOUR).trust_roots();
            (
                roots.signing,
                TrustRoots::effective(Some(&roots), AuthPolicy::PqOnly),
            )
        };
        // Announced, then signing with the P-256 root still trusted: any.
        assert_eq!(
            in_force(60),
            (IdentityAlgorithm::EcdsaP256, AuthPolicy::Any)
        );
        assert_eq!(
            in_force(3600),
            (IdentityAlgorithm::MlDsa65, AuthPolicy::Any)
        );
        // The P-256 root retired: pq-only applies.
        assert_eq!(
            in_force(3 * 3600),
            (IdentityAlgorithm::MlDsa65, AuthPolicy::PqOnly)
        );
        // `any` stays `any`; no roots known yet is never pq-only.
        let roots = two.phase(t(3 * 3600), HOUR).trust_roots();
        assert_eq!(
            TrustRoots::effective(Some(&roots), AuthPolicy::Any),
            AuthPolicy::Any
        );
        assert_eq!(
            TrustRoots::effective(None, AuthPolicy::PqOnly),
            AuthPolicy::Any
        );
    }

    #[test]
    fn a_rotation_announces_then_signs_then_retires_the_old_root() {
        let old = Arc::new(Ca::generate("td").unwrap());
        let one = Schedule::single(old.clone());
        let p = one.phase(t(0), HOUR);
        assert!(Arc::ptr_eq(&p.signer, &old));
        assert_eq!((p.trusted, p.next_change), (1, None));

        let two = one
            .rotate(t(0), 2 * HOUR, HOUR, Ca::generate("td").unwrap())
            .unwrap();
        let new = two.roots()[1].ca.clone();
        // Announced: the old root signs, both are trusted, the change is due at activation.
        let p = two.phase(t(60), HOUR);
        assert!(Arc::ptr_eq(&p.signer, &old));
        assert_eq!(names(&p, &two), vec![0, 1]);
        assert_eq!(p.next_change, Some(t(7200)));
        assert!(p.bundle.starts_with(old.root_pem()), "signer first");
        // Active: the new root signs, the old one is trusted until its last
        // certificate (issued just before activation) has expired.
        let p = two.phase(t(7200), HOUR);
        assert!(Arc::ptr_eq(&p.signer, &new));
        assert_eq!(names(&p, &two), vec![0, 1]);
        let retire = t(7200) + HOUR + margin(HOUR);
        assert_eq!(p.next_change, Some(retire));
        assert!(p.bundle.starts_with(new.root_pem()));
        // Retired.
        let p = two.phase(retire, HOUR);
        assert!(Arc::ptr_eq(&p.signer, &new));
        assert_eq!((names(&p, &two), p.next_change), (vec![1], None));
    }

    #[test]
    fn one_rotation_at_a_time_and_retired_roots_are_dropped() {
        let one = Schedule::single(Arc::new(Ca::generate("td").unwrap()));
        let two = one
            .rotate(t(0), HOUR, HOUR, Ca::generate("td").unwrap())
            .unwrap();
        let e = two
            .rotate(t(600), HOUR, HOUR, Ca::generate("td").unwrap())
            .unwrap_err();
        assert!(matches!(e, RootsError::Pending { .. }));
        assert!(e.to_string().contains("activates in 3000s"), "{e}");
        // During the old root's overlap a third root may be announced: all
        // three are trusted until each older one retires.
        let three = two
            .rotate(t(3600), HOUR, HOUR, Ca::generate("td").unwrap())
            .unwrap();
        assert_eq!(three.roots().len(), 3);
        assert_eq!(three.phase(t(3601), HOUR).trusted, 3);
        // Once retired, rotating again drops it from the schedule.
        let four = three
            .rotate(t(4 * 3600), HOUR, HOUR, Ca::generate("td").unwrap())
            .unwrap();
        assert_eq!(four.roots().len(), 2, "only the signer and the new root");
        assert!(Arc::ptr_eq(&four.roots()[0].ca, &three.roots()[2].ca));
    }

    #[test]
    fn impossible_times_and_unannounced_signers_are_refused() {
        let one = Schedule::single(Arc::new(Ca::generate("td").unwrap()));
        let e = one
            .rotate(t(0), Duration::MAX, HOUR, Ca::generate("td").unwrap())
            .unwrap_err();
        assert!(matches!(e, RootsError::Overlap { .. }), "{e}");
        let two = one
            .rotate(t(0), HOUR, HOUR, Ca::generate("td").unwrap())
            .unwrap();
        let mut stored: serde_json::Value =
            serde_json::from_slice(&two.to_json().unwrap()).unwrap();
        stored["roots"][1]["activatesAt"] = u64::MAX.into();
        let e = Schedule::from_json(stored.to_string().as_bytes(), "roots.json").unwrap_err();
        assert!(matches!(e, RootsError::BadTime { index: 1, .. }), "{e}");
        // A rotation announced first is a fine successor; a root that signs
        // at once without having been announced is not.
        one.check_successor(&two, t(1), HOUR).unwrap();
        let stranger = Schedule::single(Arc::new(Ca::generate("td").unwrap()));
        assert!(matches!(
            one.check_successor(&stranger, t(1), HOUR),
            Err(RootsError::Unannounced)
        ));
    }

    #[test]
    fn stored_schedules_round_trip_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(Ca::generate("td").unwrap());
        let loaded = Schedule::load(dir.path(), ca.clone()).unwrap();
        assert_eq!(loaded.roots().len(), 1, "no file: the single root");
        let two = loaded
            .rotate(t(0), HOUR, HOUR, Ca::generate("td").unwrap())
            .unwrap();
        two.save(dir.path()).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(ROOTS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let back = Schedule::load(dir.path(), ca).unwrap();
        assert_eq!(back.roots().len(), 2);
        for (a, b) in back.roots().iter().zip(two.roots()) {
            assert_eq!(a.ca.root_pem(), b.ca.root_pem());
            assert_eq!(a.activates_at, b.activates_at);
        }
        for (json, expect) in [
            (&b"{"[..], "not a valid root schedule"),
            (br#"{"roots":[]}"#, "lists no root"),
            (
                br#"{"roots":[{"certPem":"x","keyPem":"y","activatesAt":0}]}"#,
                "root 0 is unusable",
            ),
        ] {
            let e = Schedule::from_json(json, "roots.json").unwrap_err();
            assert!(e.to_string().contains(expect), "{e}");
        }
        let mut stored: serde_json::Value =
            serde_json::from_slice(&two.to_json().unwrap()).unwrap();
        stored["roots"][1]["activatesAt"] = 0.into();
        let e = Schedule::from_json(stored.to_string().as_bytes(), "roots.json").unwrap_err();
        assert!(matches!(e, RootsError::Unordered { .. }), "{e}");
    }
}
