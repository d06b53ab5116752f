//! Fault rules: what to inject, where, and when.
//!
//! A rule names a target (a VSIC, by its address space, or a drive, by its
//! byte offsets), an operation, an optional byte range, an action and a
//! trigger. [`Faults::check`] is asked once per request (VSIC target) or
//! per drive transfer (drive target); the first rule that matches and
//! fires decides. With no rule at all the data path never gets here (one
//! relaxed load in [`super::Workbench`]).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer};
use serde_json::{json, Value};
use vsic_abi::units::parse_duration;
use vsic_abi::virtio::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_UNSUPP};

/// Sector size of torn writes and of blktrace sectors.
pub const SECTOR: u64 = 512;

/// What a rule applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultTarget {
    Vsic(u32),
    Drive(u32),
}

/// The request kinds a rule matches. Discard covers WRITE_ZEROES too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultOp {
    Read,
    Write,
    Flush,
    Discard,
    Any,
}

impl FaultOp {
    pub fn name(self) -> &'static str {
        match self {
            FaultOp::Read => "read",
            FaultOp::Write => "write",
            FaultOp::Flush => "flush",
            FaultOp::Discard => "discard",
            FaultOp::Any => "any",
        }
    }
}

/// What happens to a request a rule fires on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FaultAction {
    /// Fails with this virtio status; nothing reaches the drive.
    Error { status: u8 },
    /// Waits this long, then runs normally.
    Delay(Duration),
    /// A read runs, then `bits` distinct bits of its data are flipped.
    Corrupt { bits: u32 },
    /// Only the first `sectors` sectors of a write reach the drive; the
    /// request fails with IOERR.
    Torn { sectors: u64 },
}

impl FaultAction {
    pub fn name(&self) -> &'static str {
        match self {
            FaultAction::Error { .. } => "error",
            FaultAction::Delay(_) => "delay",
            FaultAction::Corrupt { .. } => "corrupt",
            FaultAction::Torn { .. } => "torn",
        }
    }
}

/// The arguments of `fault-add` (and of `vsicd --fault`), as sent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub vsic: Option<u32>,
    pub drive: Option<u32>,
    #[serde(default = "any")]
    pub op: FaultOp,
    /// Byte range: the rule matches requests overlapping
    /// `[offset, offset + length)`.
    pub offset: Option<u64>,
    pub length: Option<u64>,
    #[serde(default = "error_action")]
    pub action: String,
    /// `error`: the virtio status, "ioerr" (default), "unsupp" or a number.
    #[serde(default, deserialize_with = "status_arg")]
    pub status: Option<u8>,
    /// `delay`: e.g. "20ms".
    pub delay: Option<String>,
    /// `corrupt`: bits to flip per read (default 1).
    pub bits: Option<u32>,
    /// `torn`: sectors of the write that reach the drive (default 0).
    pub sectors: Option<u64>,
    /// Fire with this probability (0 to 1) on each matching request.
    pub probability: Option<f64>,
    /// Fire on every n-th matching request (n, 2n, ...).
    pub every: Option<u64>,
    /// Fire at most this many times.
    pub count: Option<u64>,
    /// Seed of the probability draws (default: from the clock).
    pub seed: Option<u64>,
}

fn any() -> FaultOp {
    FaultOp::Any
}

fn error_action() -> String {
    "error".into()
}

fn status_arg<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u8>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if s == "ioerr" => Ok(Some(VIRTIO_BLK_S_IOERR)),
        Value::String(s) if s == "unsupp" => Ok(Some(VIRTIO_BLK_S_UNSUPP)),
        Value::Number(n) => match n.as_u64() {
            Some(v @ 1..=255) => Ok(Some(v as u8)),
            _ => Err(D::Error::custom("status must be 1 to 255")),
        },
        other => Err(D::Error::custom(format!(
            "status must be \"ioerr\", \"unsupp\" or a number, not {other}"
        ))),
    }
}

/// Why a rule is refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RuleError {
    #[error("a rule targets exactly one of \"vsic\" or \"drive\"")]
    Target,
    #[error("no VSIC {0}")]
    NoSuchVsic(u32),
    #[error("no drive {0}")]
    NoSuchDrive(u32),
    #[error("a byte range needs both \"offset\" and \"length\" (length > 0, no overflow)")]
    Range,
    #[error("unknown action {0:?} (error, delay, corrupt, torn)")]
    Action(String),
    #[error("argument {0:?} does not belong to action {1}")]
    Stray(&'static str, &'static str),
    #[error("a delay rule needs \"delay\" (e.g. \"20ms\"): {0}")]
    Delay(String),
    #[error("corrupt applies to reads and torn to writes, not to op {0}")]
    OpAction(&'static str),
    #[error("a flush has no bytes: a flush rule takes no byte range")]
    FlushRange,
    #[error("probability must be within 0 and 1")]
    Probability,
    #[error("\"every\", \"count\" and \"bits\" must be at least 1")]
    Zero,
    #[error("bad rule text {0:?}: {1}")]
    Text(String, String),
}

/// A checked rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub target: FaultTarget,
    pub op: FaultOp,
    pub range: Option<(u64, u64)>,
    pub action: FaultAction,
    pub probability: Option<f64>,
    pub every: Option<u64>,
    pub count: Option<u64>,
}

impl RuleSpec {
    /// Checks the spec against the controller's shape.
    pub fn check(&self, vsics: u32, drives: u32) -> Result<(Rule, u64), RuleError> {
        let target = match (self.vsic, self.drive) {
            (Some(v), None) if v < vsics => FaultTarget::Vsic(v),
            (Some(v), None) => return Err(RuleError::NoSuchVsic(v)),
            (None, Some(d)) if d < drives => FaultTarget::Drive(d),
            (None, Some(d)) => return Err(RuleError::NoSuchDrive(d)),
            _ => return Err(RuleError::Target),
        };
        let range = match (self.offset, self.length) {
            (None, None) => None,
            (Some(o), Some(l)) if l > 0 && o.checked_add(l).is_some() => Some((o, l)),
            _ => return Err(RuleError::Range),
        };
        let stray = |name: &'static str, set: bool, action: &'static str| {
            if set {
                Err(RuleError::Stray(name, action))
            } else {
                Ok(())
            }
        };
        let mut op = self.op;
        let action = match self.action.as_str() {
            "error" => {
                stray("delay", self.delay.is_some(), "error")?;
                stray("bits", self.bits.is_some(), "error")?;
                stray("sectors", self.sectors.is_some(), "error")?;
                FaultAction::Error {
                    status: self.status.unwrap_or(VIRTIO_BLK_S_IOERR),
                }
            }
            "delay" => {
                stray("status", self.status.is_some(), "delay")?;
                stray("bits", self.bits.is_some(), "delay")?;
                stray("sectors", self.sectors.is_some(), "delay")?;
                let text = self.delay.as_deref().unwrap_or("");
                FaultAction::Delay(
                    parse_duration(text).map_err(|e| RuleError::Delay(e.to_string()))?,
                )
            }
            "corrupt" => {
                stray("status", self.status.is_some(), "corrupt")?;
                stray("delay", self.delay.is_some(), "corrupt")?;
                stray("sectors", self.sectors.is_some(), "corrupt")?;
                op = match op {
                    FaultOp::Read | FaultOp::Any => FaultOp::Read,
                    other => return Err(RuleError::OpAction(other.name())),
                };
                let bits = self.bits.unwrap_or(1);
                if bits == 0 {
                    return Err(RuleError::Zero);
                }
                FaultAction::Corrupt { bits }
            }
            "torn" => {
                stray("status", self.status.is_some(), "torn")?;
                stray("delay", self.delay.is_some(), "torn")?;
                stray("bits", self.bits.is_some(), "torn")?;
                op = match op {
                    FaultOp::Write | FaultOp::Any => FaultOp::Write,
                    other => return Err(RuleError::OpAction(other.name())),
                };
                FaultAction::Torn {
                    sectors: self.sectors.unwrap_or(0),
                }
            }
            other => return Err(RuleError::Action(other.to_string())),
        };
        if op == FaultOp::Flush && range.is_some() {
            return Err(RuleError::FlushRange);
        }
        if let Some(p) = self.probability {
            if !(0.0..=1.0).contains(&p) {
                return Err(RuleError::Probability);
            }
        }
        if self.every == Some(0) || self.count == Some(0) {
            return Err(RuleError::Zero);
        }
        let seed = self.seed.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
        });
        Ok((
            Rule {
                target,
                op,
                range,
                action,
                probability: self.probability,
                every: self.every,
                count: self.count,
            },
            seed,
        ))
    }
}

/// Parses the command-line spelling `key=value,key=value` (the keys of
/// `fault-add`): numbers become JSON numbers, the rest strings.
pub fn parse_rule_text(text: &str) -> Result<RuleSpec, RuleError> {
    let bad = |why: String| RuleError::Text(text.to_string(), why);
    let mut obj = serde_json::Map::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| bad(format!("{part:?} is not key=value")))?;
        let value = if let Ok(n) = v.parse::<u64>() {
            json!(n)
        } else if let Ok(f) = v.parse::<f64>() {
            json!(f)
        } else {
            json!(v)
        };
        obj.insert(k.to_string(), value);
    }
    serde_json::from_value(Value::Object(obj)).map_err(|e| bad(e.to_string()))
}

/// A rule in the table, with its counters.
pub struct Armed {
    pub id: u64,
    pub rule: Rule,
    /// Matching requests seen.
    pub matched: AtomicU64,
    pub injected: AtomicU64,
    rng: AtomicU64,
}

impl Armed {
    /// A uniform draw in [0, 1) (splitmix64 on an atomic counter).
    fn draw(&self) -> f64 {
        let mut z = self
            .rng
            .fetch_add(0x9e37_79b9_7f4a_7c15, Relaxed)
            .wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    fn matches(&self, target: FaultTarget, op: FaultOp, range: Option<(u64, u64)>) -> bool {
        if self.rule.target != target || !(self.rule.op == FaultOp::Any || self.rule.op == op) {
            return false;
        }
        match (self.rule.range, range) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some((start, len)), Some((off, n))) => {
                // Overlap; a zero-length request touches its offset.
                let end = start + len;
                let req_end = off.saturating_add(n.max(1));
                off < end && start < req_end
            }
        }
    }

    /// Whether the trigger fires for this matching request (counting it).
    fn fires(&self) -> bool {
        let n = self.matched.fetch_add(1, Relaxed) + 1;
        if let Some(every) = self.rule.every {
            if !n.is_multiple_of(every) {
                return false;
            }
        }
        if let Some(p) = self.rule.probability {
            if self.draw() >= p {
                return false;
            }
        }
        match self.rule.count {
            Some(count) => self
                .injected
                .fetch_update(Relaxed, Relaxed, |i| (i < count).then_some(i + 1))
                .is_ok(),
            None => {
                self.injected.fetch_add(1, Relaxed);
                true
            }
        }
    }

    /// The rule as `fault-list` shows it.
    pub fn describe(&self) -> Value {
        let r = &self.rule;
        let mut v = json!({
            "id": self.id,
            "op": r.op.name(),
            "matched": self.matched.load(Relaxed),
            "injected": self.injected.load(Relaxed),
        });
        match r.target {
            FaultTarget::Vsic(n) => v["vsic"] = json!(n),
            FaultTarget::Drive(n) => v["drive"] = json!(n),
        }
        if let Some((o, l)) = r.range {
            v["offset"] = json!(o);
            v["length"] = json!(l);
        }
        match r.action {
            FaultAction::Error { status } => {
                v["action"] = json!("error");
                v["status"] = json!(status);
            }
            FaultAction::Delay(d) => {
                v["action"] = json!("delay");
                v["delay_ns"] = json!(d.as_nanos() as u64);
            }
            FaultAction::Corrupt { bits } => {
                v["action"] = json!("corrupt");
                v["bits"] = json!(bits);
            }
            FaultAction::Torn { sectors } => {
                v["action"] = json!("torn");
                v["sectors"] = json!(sectors);
            }
        }
        for (k, x) in [("every", r.every), ("count", r.count)] {
            if let Some(x) = x {
                v[k] = json!(x);
            }
        }
        if let Some(p) = r.probability {
            v["probability"] = json!(p);
        }
        v
    }
}

/// A rule that fired.
#[derive(Debug, Clone, Copy)]
pub struct Hit {
    pub rule: u64,
    pub action: FaultAction,
}

/// The table of rules, plus injection totals per VSIC and per drive.
pub struct Faults {
    rules: RwLock<Vec<Arc<Armed>>>,
    next_id: AtomicU64,
    pub by_vsic: Vec<AtomicU64>,
    pub by_drive: Vec<AtomicU64>,
}

impl Faults {
    pub fn new(vsics: u32, drives: u32) -> Faults {
        Faults {
            rules: RwLock::new(Vec::new()),
            next_id: AtomicU64::new(1),
            by_vsic: (0..vsics).map(|_| AtomicU64::new(0)).collect(),
            by_drive: (0..drives).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub fn vsics(&self) -> u32 {
        self.by_vsic.len() as u32
    }

    pub fn drives(&self) -> u32 {
        self.by_drive.len() as u32
    }

    /// Adds a rule; returns its id.
    pub fn add(&self, spec: &RuleSpec) -> Result<u64, RuleError> {
        let (rule, seed) = spec.check(self.vsics(), self.drives())?;
        let id = self.next_id.fetch_add(1, Relaxed);
        self.write().push(Arc::new(Armed {
            id,
            rule,
            matched: AtomicU64::new(0),
            injected: AtomicU64::new(0),
            rng: AtomicU64::new(seed),
        }));
        Ok(id)
    }

    /// Removes rule `id` (or every rule); returns how many went.
    pub fn clear(&self, id: Option<u64>) -> usize {
        let mut rules = self.write();
        let before = rules.len();
        rules.retain(|r| id.is_some_and(|id| r.id != id));
        before - rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub fn list(&self) -> Vec<Value> {
        self.read().iter().map(|r| r.describe()).collect()
    }

    /// The first rule for `target` that matches and fires, counted.
    pub fn check(
        &self,
        target: FaultTarget,
        op: FaultOp,
        range: Option<(u64, u64)>,
    ) -> Option<Hit> {
        let rules = self.read();
        let hit = rules
            .iter()
            .filter(|r| r.matches(target, op, range))
            .find(|r| r.fires())
            .map(|r| Hit {
                rule: r.id,
                action: r.rule.action,
            })?;
        let total = match target {
            FaultTarget::Vsic(n) => self.by_vsic.get(n as usize),
            FaultTarget::Drive(n) => self.by_drive.get(n as usize),
        };
        if let Some(t) = total {
            t.fetch_add(1, Relaxed);
        }
        Some(hit)
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Armed>>> {
        self.rules.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Arc<Armed>>> {
        self.rules.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(v: Value) -> RuleSpec {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn count_every_and_range() {
        let f = Faults::new(2, 1);
        f.add(&spec(json!({"vsic": 0, "op": "read", "count": 3})))
            .unwrap();
        let read = |f: &Faults| f.check(FaultTarget::Vsic(0), FaultOp::Read, Some((0, 512)));
        assert!(f
            .check(FaultTarget::Vsic(0), FaultOp::Write, Some((0, 512)))
            .is_none());
        assert!(f
            .check(FaultTarget::Vsic(1), FaultOp::Read, Some((0, 512)))
            .is_none());
        assert_eq!((0..5).filter(|_| read(&f).is_some()).count(), 3);
        assert_eq!(f.clear(None), 1);
        f.add(&spec(
            json!({"vsic": 1, "every": 3, "offset": 4096, "length": 4096}),
        ))
        .unwrap();
        let hits: Vec<bool> = (0..6)
            .map(|_| {
                f.check(
                    FaultTarget::Vsic(1),
                    FaultOp::Write,
                    Some((4096 + 512, 512)),
                )
                .is_some()
            })
            .collect();
        assert_eq!(hits, [false, false, true, false, false, true]);
        // Outside the range: never matched.
        assert!(f
            .check(FaultTarget::Vsic(1), FaultOp::Write, Some((0, 4096)))
            .is_none());
        assert_eq!(f.by_vsic[1].load(Relaxed), 2);
    }

    #[test]
    fn refusals() {
        let bad = |v: Value| Faults::new(2, 1).add(&spec(v)).unwrap_err();
        assert_eq!(bad(json!({"op": "read"})), RuleError::Target);
        assert_eq!(bad(json!({"vsic": 0, "drive": 0})), RuleError::Target);
        assert_eq!(bad(json!({"vsic": 2})), RuleError::NoSuchVsic(2));
        assert_eq!(bad(json!({"drive": 1})), RuleError::NoSuchDrive(1));
        assert_eq!(bad(json!({"vsic": 0, "offset": 1})), RuleError::Range);
        assert_eq!(
            bad(json!({"vsic": 0, "action": "corrupt", "op": "write"})),
            RuleError::OpAction("write")
        );
        assert!(matches!(
            bad(json!({"vsic": 0, "action": "delay"})),
            RuleError::Delay(_)
        ));
        assert_eq!(
            bad(json!({"vsic": 0, "probability": 1.5})),
            RuleError::Probability
        );
        assert_eq!(bad(json!({"vsic": 0, "count": 0})), RuleError::Zero);
        assert_eq!(
            bad(json!({"vsic": 0, "action": "error", "delay": "1ms"})),
            RuleError::Stray("delay", "error")
        );
        assert_eq!(
            bad(json!({"vsic": 0, "op": "flush", "offset": 0, "length": 1})),
            RuleError::FlushRange
        );
    }

    #[test]
    fn text_spelling() {
        let s = parse_rule_text("vsic=0,op=read,action=error,count=3").unwrap();
        assert_eq!((s.vsic, s.op, s.count), (Some(0), FaultOp::Read, Some(3)));
        let s = parse_rule_text("drive=1,action=delay,delay=5ms,probability=0.5").unwrap();
        assert_eq!(s.probability, Some(0.5));
        assert!(parse_rule_text("vsic=0,nonsense").is_err());
        assert!(parse_rule_text("vsic=0,colour=red").is_err());
    }

    #[test]
    fn probability_is_roughly_right() {
        let f = Faults::new(1, 1);
        f.add(&spec(json!({"vsic": 0, "probability": 0.25, "seed": 7})))
            .unwrap();
        let n = 10_000;
        let hits = (0..n)
            .filter(|_| f.check(FaultTarget::Vsic(0), FaultOp::Read, None).is_some())
            .count();
        // Binomial(10000, 0.25): sd ~43; 6 sd either way.
        assert!((2240..=2760).contains(&hits), "{hits}");
    }
}
