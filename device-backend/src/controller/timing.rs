//! The drive timing model: when a request's completion is due, per
//! backing drive, for firmware experiments ("what if the controller
//! answered in 15 µs with 8 channels").
//!
//! A drive has `units` (channels, dies) working in parallel. A request
//! occupies one unit for its service time, `latency + bytes /
//! unit_bandwidth`, where the latency is drawn per operation (read, write,
//! flush) from a fixed value, a uniform jitter around it, or a table of
//! percentiles. A request that finds its unit busy queues behind it (FIFO
//! per unit), so a drive serves `units` requests at once and the model
//! obeys Little's law exactly: IOPS = min(QD, units) / service time.
//!
//! The unit is the least busy one by default (the unit that frees up
//! first, as a controller with a free-placement FTL or a RAID cache
//! writes anywhere: that is what makes the analytic formula exact), or,
//! with `placement = "stripe"`, the one the drive offset falls on in
//! `stripe`-byte stripes (as a flash controller stripes its address
//! space: random requests then collide on units as real ones do).
//!
//! Optionally the drive has one link (`link_bandwidth`, e.g. the 12 Gb/s
//! SAS link of a RAID controller) that every transfer crosses after its
//! unit is done, one at a time: large requests are then bound by the link
//! (throughput = link bandwidth) however many units work.
//!
//! FLUSH occupies no unit: it is due `flush` latency after every write the
//! drive took before it is due (never before), as a write-back cache
//! drains before it reports a flush.
//!
//! The data of a request moves when it is executed; only its completion
//! waits for the due time (see `front::completions`). The model is pure
//! bookkeeping behind one mutex per drive; nothing here sleeps.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::Deserialize;
use vsic_abi::units::{parse_duration, parse_size};

/// Most units a drive may have.
pub const MAX_UNITS: u32 = 1024;

/// How one operation's latency is drawn.
#[derive(Debug, Clone, PartialEq)]
pub enum Latency {
    Fixed(Duration),
    /// Uniform in `[mean - jitter, mean + jitter]`.
    Uniform {
        mean: Duration,
        jitter: Duration,
    },
    /// Percentile points `(p, latency)`, p ascending in (0, 100], the last
    /// 100; latencies non-decreasing. Linear between points; below the
    /// first point its latency.
    Table(Vec<(f64, Duration)>),
}

impl Latency {
    pub const ZERO: Latency = Latency::Fixed(Duration::ZERO);

    /// The latency at quantile `u` in [0, 1).
    fn at(&self, u: f64) -> Duration {
        match self {
            Latency::Fixed(d) => *d,
            Latency::Uniform { mean, jitter } => {
                mean.saturating_sub(*jitter) + jitter.mul_f64(2.0 * u)
            }
            Latency::Table(points) => {
                let q = u * 100.0;
                let mut prev: Option<(f64, Duration)> = None;
                for &(p, d) in points {
                    if q <= p {
                        return match prev {
                            None => d,
                            Some((p0, d0)) => {
                                let f = (q - p0) / (p - p0);
                                d0 + (d.saturating_sub(d0)).mul_f64(f)
                            }
                        };
                    }
                    prev = Some((p, d));
                }
                points.last().map_or(Duration::ZERO, |&(_, d)| d)
            }
        }
    }

    /// The median (what p50 shows when no request queues).
    pub fn median(&self) -> Duration {
        self.at(0.5)
    }

    /// The mean (what throughput depends on), by numeric integration for
    /// a table.
    pub fn mean(&self) -> Duration {
        match self {
            Latency::Fixed(d) => *d,
            Latency::Uniform { mean, jitter } => {
                // Clamped at zero below: the mean shifts up when jitter > mean.
                if jitter <= mean {
                    *mean
                } else {
                    (*mean + *jitter) / 2
                }
            }
            Latency::Table(_) => {
                const STEPS: u32 = 10_000;
                let sum: f64 = (0..STEPS)
                    .map(|i| {
                        self.at((f64::from(i) + 0.5) / f64::from(STEPS))
                            .as_secs_f64()
                    })
                    .sum();
                Duration::from_secs_f64(sum / f64::from(STEPS))
            }
        }
    }
}

/// Which unit a request occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// The unit that frees up first.
    LeastBusy,
    /// Unit `(drive offset / bytes) % units`.
    Stripe { bytes: u64 },
}

/// The timing of one drive.
#[derive(Debug, Clone, PartialEq)]
pub struct DriveModel {
    pub units: u32,
    pub placement: Placement,
    /// Bytes per second one unit moves; 0 = unlimited.
    pub unit_bandwidth: u64,
    /// Bytes per second of the drive's one link, shared by all units;
    /// 0 = no link.
    pub link_bandwidth: u64,
    pub read: Latency,
    pub write: Latency,
    pub flush: Latency,
}

impl DriveModel {
    /// What `--service-latency`, `--service-bandwidth` and
    /// `--service-units` describe: reads and writes take `latency`, a
    /// FLUSH completes with the last earlier write.
    pub fn fixed(latency: Duration, unit_bandwidth: u64, units: u32) -> DriveModel {
        DriveModel {
            units,
            placement: Placement::LeastBusy,
            unit_bandwidth,
            link_bandwidth: 0,
            read: Latency::Fixed(latency),
            write: Latency::Fixed(latency),
            flush: Latency::ZERO,
        }
    }

    /// Time to move `bytes` through one unit.
    fn transfer(&self, bytes: u64) -> Duration {
        time_at(bytes, self.unit_bandwidth)
    }
}

/// Time to move `bytes` at `rate` bytes per second (0: no time).
fn time_at(bytes: u64, rate: u64) -> Duration {
    if rate == 0 || bytes == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(
        u64::try_from(u128::from(bytes) * 1_000_000_000 / u128::from(rate)).unwrap_or(u64::MAX),
    )
}

/// The model of every drive: a default and per-drive exceptions (by the
/// drive's position among `--drive` options, from 0).
#[derive(Debug, Clone, PartialEq)]
pub struct ServiceModel {
    pub default: DriveModel,
    pub drives: BTreeMap<usize, DriveModel>,
}

impl ServiceModel {
    /// Every drive alike.
    pub fn uniform(model: DriveModel) -> ServiceModel {
        ServiceModel {
            default: model,
            drives: BTreeMap::new(),
        }
    }

    pub fn for_drive(&self, drive: usize) -> &DriveModel {
        self.drives.get(&drive).unwrap_or(&self.default)
    }

    /// Reads a drive-model file (TOML; see docs/timing-model.md).
    pub fn load(path: &Path) -> Result<ServiceModel, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Read {
            path: path.display().to_string(),
            source,
        })?;
        ServiceModel::parse(&text)
    }

    pub fn parse(text: &str) -> Result<ServiceModel, ModelError> {
        let file: ModelFile =
            toml::from_str(text).map_err(|e| ModelError::Syntax(e.to_string()))?;
        let default = file.model.build("model")?;
        let mut drives = BTreeMap::new();
        for (key, spec) in file.drives {
            let index: usize = key
                .parse()
                .map_err(|_| ModelError::DriveIndex(key.clone()))?;
            drives.insert(index, spec.build(&format!("drives.{key}"))?);
        }
        Ok(ServiceModel { default, drives })
    }
}

/// Why a drive model was refused.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Syntax(String),
    #[error("[drives.{0}]: the key must be a drive index (0 for the first --drive)")]
    DriveIndex(String),
    #[error("{at}: {what}")]
    Invalid { at: String, what: String },
}

fn invalid(at: &str, what: impl Into<String>) -> ModelError {
    ModelError::Invalid {
        at: at.to_string(),
        what: what.into(),
    }
}

// --- the file format -------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelFile {
    /// Free text: what the model stands for.
    #[allow(dead_code)] // documentation for the reader of the file
    description: Option<String>,
    model: ModelSpec,
    #[serde(default)]
    drives: BTreeMap<String, ModelSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ModelSpec {
    units: Option<u32>,
    placement: Option<String>,
    stripe: Option<String>,
    unit_bandwidth: Option<String>,
    link_bandwidth: Option<String>,
    read: Option<OpSpec>,
    write: Option<OpSpec>,
    flush: Option<OpSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OpSpec {
    latency: Option<String>,
    jitter: Option<String>,
    percentiles: Option<Vec<PointSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PointSpec {
    p: f64,
    latency: String,
}

fn duration(at: &str, text: &str) -> Result<Duration, ModelError> {
    parse_duration(text).map_err(|e| invalid(at, e.to_string()))
}

impl ModelSpec {
    fn build(self, at: &str) -> Result<DriveModel, ModelError> {
        let units = self.units.unwrap_or(1);
        if !(1..=MAX_UNITS).contains(&units) {
            return Err(invalid(
                &format!("{at}.units"),
                format!("{units}: must be 1 to {MAX_UNITS}"),
            ));
        }
        let stripe = self
            .stripe
            .as_deref()
            .map(|s| parse_size(s).map_err(|e| invalid(&format!("{at}.stripe"), e.to_string())))
            .transpose()?;
        let placement = match (self.placement.as_deref().unwrap_or("least-busy"), stripe) {
            ("least-busy", None) => Placement::LeastBusy,
            ("least-busy", Some(_)) => {
                return Err(invalid(at, "stripe is for placement = \"stripe\""))
            }
            ("stripe", Some(bytes)) if bytes >= 512 => Placement::Stripe { bytes },
            ("stripe", _) => {
                return Err(invalid(
                    &format!("{at}.stripe"),
                    "placement = \"stripe\" needs stripe = SIZE (at least 512)",
                ))
            }
            (other, _) => {
                return Err(invalid(
                    &format!("{at}.placement"),
                    format!("'{other}': use \"least-busy\" or \"stripe\""),
                ))
            }
        };
        let unit_bandwidth = match self.unit_bandwidth.as_deref() {
            None => 0,
            Some(s) => parse_size(s)
                .map_err(|e| invalid(&format!("{at}.unit_bandwidth"), e.to_string()))?,
        };
        let link_bandwidth = match self.link_bandwidth.as_deref() {
            None => 0,
            Some(s) => parse_size(s)
                .map_err(|e| invalid(&format!("{at}.link_bandwidth"), e.to_string()))?,
        };
        let op = |spec: Option<OpSpec>, name: &str| match spec {
            None => Ok(Latency::ZERO),
            Some(spec) => spec.build(&format!("{at}.{name}")),
        };
        Ok(DriveModel {
            units,
            placement,
            unit_bandwidth,
            link_bandwidth,
            read: op(self.read, "read")?,
            write: op(self.write, "write")?,
            flush: op(self.flush, "flush")?,
        })
    }
}

impl OpSpec {
    fn build(self, at: &str) -> Result<Latency, ModelError> {
        match (self.latency, self.jitter, self.percentiles) {
            (Some(l), None, None) => Ok(Latency::Fixed(duration(at, &l)?)),
            (Some(l), Some(j), None) => {
                let mean = duration(at, &l)?;
                let jitter = duration(at, &j)?;
                if jitter > mean {
                    return Err(invalid(at, "jitter larger than the latency"));
                }
                Ok(Latency::Uniform { mean, jitter })
            }
            (None, None, Some(points)) => {
                let mut table = Vec::with_capacity(points.len());
                let mut last: Option<(f64, Duration)> = None;
                for point in points {
                    let d = duration(at, &point.latency)?;
                    let ascending = last.is_none_or(|(p, l)| point.p > p && d >= l);
                    if !(point.p > 0.0 && point.p <= 100.0 && ascending) {
                        return Err(invalid(
                            at,
                            "percentiles: p ascending in (0, 100], latencies not decreasing",
                        ));
                    }
                    last = Some((point.p, d));
                    table.push((point.p, d));
                }
                if last.is_none_or(|(p, _)| p != 100.0) {
                    return Err(invalid(at, "percentiles: the last point must be p = 100"));
                }
                Ok(Latency::Table(table))
            }
            _ => Err(invalid(
                at,
                "give latency (optionally with jitter) or percentiles",
            )),
        }
    }
}

// --- the running model -----------------------------------------------------

/// What a request asks of a drive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimedOp {
    Read,
    Write,
}

/// One drive's state: when each unit frees up, when its last write is due.
struct DriveClock {
    model: DriveModel,
    free_at: Vec<Option<Instant>>,
    /// When the link frees up.
    link_free_at: Option<Instant>,
    last_write_due: Option<Instant>,
    rng: u64,
}

impl DriveClock {
    fn new(model: DriveModel, seed: u64) -> DriveClock {
        DriveClock {
            free_at: vec![None; model.units as usize],
            model,
            link_free_at: None,
            last_write_due: None,
            rng: seed | 1,
        }
    }

    /// A uniform draw in [0, 1) (xorshift64*).
    fn uniform(&mut self) -> f64 {
        self.rng ^= self.rng >> 12;
        self.rng ^= self.rng << 25;
        self.rng ^= self.rng >> 27;
        let x = self.rng.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    fn unit_for(&self, offset: u64) -> usize {
        match self.model.placement {
            Placement::Stripe { bytes } => {
                ((offset / bytes) % u64::from(self.model.units)) as usize
            }
            Placement::LeastBusy => {
                let mut best = 0;
                for (i, free) in self.free_at.iter().enumerate() {
                    match free {
                        None => return i,
                        Some(t) if Some(*t) < self.free_at[best] => best = i,
                        _ => {}
                    }
                }
                best
            }
        }
    }

    fn schedule(&mut self, op: TimedOp, offset: u64, bytes: u64, now: Instant) -> Instant {
        let latency = match op {
            TimedOp::Read => &self.model.read,
            TimedOp::Write => &self.model.write,
        };
        let latency = match latency {
            Latency::Fixed(d) => *d,
            l => {
                let l = l.clone();
                l.at(self.uniform())
            }
        };
        let service = latency + self.model.transfer(bytes);
        let unit = self.unit_for(offset);
        let start = self.free_at[unit].map_or(now, |t| t.max(now));
        let unit_done = start + service;
        self.free_at[unit] = Some(unit_done);
        let due = match self.model.link_bandwidth {
            0 => unit_done,
            rate => {
                let on_link = self.link_free_at.map_or(unit_done, |t| t.max(unit_done));
                let done = on_link + time_at(bytes, rate);
                self.link_free_at = Some(done);
                done
            }
        };
        if op == TimedOp::Write {
            self.last_write_due = Some(self.last_write_due.map_or(due, |t| t.max(due)));
        }
        due
    }

    fn flush(&mut self, now: Instant) -> Instant {
        let latency = match &self.model.flush {
            Latency::Fixed(d) => *d,
            l => {
                let l = l.clone();
                l.at(self.uniform())
            }
        };
        self.last_write_due.map_or(now, |t| t.max(now)) + latency
    }
}

/// The model of every drive of a controller, running.
pub struct Timing {
    model: ServiceModel,
    drives: Vec<Mutex<DriveClock>>,
}

impl Timing {
    pub fn new(model: ServiceModel, drives: usize) -> Timing {
        let clocks = (0..drives)
            .map(|d| {
                Mutex::new(DriveClock::new(
                    model.for_drive(d).clone(),
                    0x9e37_79b9_7f4a_7c15 ^ d as u64,
                ))
            })
            .collect();
        Timing {
            model,
            drives: clocks,
        }
    }

    pub fn model(&self) -> &ServiceModel {
        &self.model
    }

    fn clock(&self, drive: usize) -> Option<std::sync::MutexGuard<'_, DriveClock>> {
        self.drives
            .get(drive)
            .map(|c| c.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Books `bytes` at `offset` of `drive` for `op` at `now`; when it is due.
    pub fn schedule(
        &self,
        drive: usize,
        op: TimedOp,
        offset: u64,
        bytes: u64,
        now: Instant,
    ) -> Instant {
        self.clock(drive)
            .map_or(now, |mut c| c.schedule(op, offset, bytes, now))
    }

    /// A FLUSH at `now`: due after every drive's earlier writes.
    pub fn flush(&self, now: Instant) -> Instant {
        (0..self.drives.len())
            .filter_map(|d| self.clock(d).map(|mut c| c.flush(now)))
            .max()
            .unwrap_or(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    fn fixed(units: u32, us: u32) -> Timing {
        Timing::new(
            ServiceModel::uniform(DriveModel::fixed(US * us, 0, units)),
            1,
        )
    }

    #[test]
    fn units_serve_in_parallel_and_queue_beyond() {
        let t = fixed(2, 10);
        let now = Instant::now();
        let due: Vec<_> = (0..5)
            .map(|i| t.schedule(0, TimedOp::Read, i * 4096, 4096, now) - now)
            .collect();
        assert_eq!(due, [10 * US, 10 * US, 20 * US, 20 * US, 30 * US]);
        // A unit idle since before `now` starts at `now`.
        let later = now + 100 * US;
        assert_eq!(t.schedule(0, TimedOp::Read, 0, 0, later) - later, 10 * US);
    }

    #[test]
    fn bandwidth_adds_transfer_time_per_unit() {
        let model = DriveModel::fixed(5 * US, 1_000_000_000, 1); // 1 GB/s
        let t = Timing::new(ServiceModel::uniform(model), 1);
        let now = Instant::now();
        assert_eq!(
            t.schedule(0, TimedOp::Write, 0, 1_000_000, now) - now,
            1005 * US
        );
        assert_eq!(t.schedule(0, TimedOp::Write, 0, 0, now) - now, 1010 * US);
    }

    #[test]
    fn the_link_carries_one_transfer_at_a_time() {
        let mut model = DriveModel::fixed(10 * US, 0, 4);
        model.link_bandwidth = 1_000_000_000; // 1 GB/s: 1 us per 1000 bytes
        let t = Timing::new(ServiceModel::uniform(model), 1);
        let now = Instant::now();
        let due: Vec<_> = (0..3)
            .map(|_| t.schedule(0, TimedOp::Read, 0, 100_000, now) - now)
            .collect();
        // Three units in parallel for 10 us, then 100 us each on the link.
        assert_eq!(due, [110 * US, 210 * US, 310 * US]);
    }

    #[test]
    fn stripe_placement_follows_the_offset() {
        let mut model = DriveModel::fixed(10 * US, 0, 4);
        model.placement = Placement::Stripe { bytes: 4096 };
        let t = Timing::new(ServiceModel::uniform(model), 1);
        let now = Instant::now();
        // Offsets 0 and 16 KiB share unit 0; 4 KiB is unit 1.
        assert_eq!(t.schedule(0, TimedOp::Read, 0, 512, now) - now, 10 * US);
        assert_eq!(t.schedule(0, TimedOp::Read, 16384, 512, now) - now, 20 * US);
        assert_eq!(t.schedule(0, TimedOp::Read, 4096, 512, now) - now, 10 * US);
    }

    #[test]
    fn a_flush_is_due_after_every_earlier_write() {
        let mut model = DriveModel::fixed(10 * US, 0, 4);
        model.write = Latency::Fixed(50 * US);
        model.flush = Latency::Fixed(3 * US);
        let t = Timing::new(ServiceModel::uniform(model), 2);
        let now = Instant::now();
        assert_eq!(t.flush(now) - now, 3 * US, "nothing written yet");
        let w = t.schedule(1, TimedOp::Write, 0, 4096, now);
        let r = t.schedule(0, TimedOp::Read, 0, 4096, now);
        let f = t.flush(now);
        assert!(f > w && f > r);
        assert_eq!(f - w, 3 * US, "on the drive that has the write");
    }

    #[test]
    fn distributions_draw_within_their_bounds() {
        let uni = Latency::Uniform {
            mean: 20 * US,
            jitter: 5 * US,
        };
        assert_eq!(uni.at(0.0), 15 * US);
        assert_eq!(uni.at(0.5), 20 * US);
        assert_eq!(uni.mean(), 20 * US);
        let table = Latency::Table(vec![(50.0, 10 * US), (90.0, 30 * US), (100.0, 100 * US)]);
        assert_eq!(table.at(0.2), 10 * US);
        assert_eq!(table.median(), 10 * US);
        assert_eq!(table.at(0.7), 20 * US);
        assert_eq!(table.at(0.95), 65 * US);
        let mean = table.mean().as_secs_f64() * 1e6;
        // 0.5*10 + 0.4*20 + 0.1*65 = 19.5
        assert!((mean - 19.5).abs() < 0.1, "{mean}");
        let mut model = DriveModel::fixed(US, 0, 1);
        model.read = uni;
        let mut clock = DriveClock::new(model, 7);
        let now = Instant::now();
        for _ in 0..1000 {
            let start = clock.free_at[0].unwrap_or(now);
            let due = clock.schedule(TimedOp::Read, 0, 0, now);
            let took = due - start;
            assert!((15 * US..=25 * US).contains(&took), "{took:?}");
        }
    }

    #[test]
    fn parses_a_model_file() {
        let m = ServiceModel::parse(
            r#"
            description = "test"
            [model]
            units = 8
            unit_bandwidth = "500M"
            link_bandwidth = "1500000000"
            read = { latency = "15us" }
            write = { latency = "20us", jitter = "5us" }
            flush = { percentiles = [{ p = 50, latency = "1ms" }, { p = 100, latency = "3ms" }] }
            [drives.1]
            placement = "stripe"
            stripe = "64K"
            read = { latency = "4ms" }
            "#,
        )
        .unwrap();
        assert_eq!(m.default.units, 8);
        assert_eq!(m.default.unit_bandwidth, 500 << 20);
        assert_eq!(m.default.link_bandwidth, 1_500_000_000);
        assert_eq!(m.default.read, Latency::Fixed(15 * US));
        assert_eq!(
            m.default.write,
            Latency::Uniform {
                mean: 20 * US,
                jitter: 5 * US
            }
        );
        assert_eq!(m.for_drive(0), &m.default);
        let d1 = m.for_drive(1);
        assert_eq!(d1.placement, Placement::Stripe { bytes: 64 << 10 });
        assert_eq!(d1.units, 1);
        assert_eq!(d1.write, Latency::ZERO);
    }

    #[test]
    fn the_presets_parse() {
        let presets = [
            include_str!("../../../qemu-configs/drive-models/raid-bbu.toml"),
            include_str!("../../../qemu-configs/drive-models/pcie-flash.toml"),
            include_str!("../../../qemu-configs/drive-models/sata-ssd.toml"),
            include_str!("../../../qemu-configs/drive-models/hard-disk.toml"),
        ];
        for text in presets {
            let m = ServiceModel::parse(text).unwrap_or_else(|e| panic!("{e}\n{text}"));
            assert!(m.default.read.median() > Duration::ZERO, "{text}");
        }
        let raid = ServiceModel::parse(presets[0]).unwrap().default;
        assert_eq!((raid.units, raid.link_bandwidth), (8, 1_500_000_000));
        assert_eq!(raid.read, Latency::Fixed(25 * US));
    }

    #[test]
    fn refuses_bad_model_files_with_the_place() {
        let err = |text: &str| ServiceModel::parse(text).unwrap_err().to_string();
        assert!(err("[model]\nunits = 0").contains("model.units"));
        assert!(err("[model]\nunitz = 1").contains("unitz"));
        assert!(err("[model]\nread = { latency = \"5 parsecs\" }").contains("model.read"));
        assert!(err("[model]\nread = { latency = \"5us\", jitter = \"6us\" }").contains("jitter"));
        assert!(err("[model]\nplacement = \"stripe\"").contains("needs stripe"));
        assert!(err("[model]\nplacement = \"random\"").contains("least-busy"));
        assert!(err(
            "[model]\nread = { percentiles = [{ p = 50, latency = \"2us\" }, { p = 90, latency = \"1us\" }] }"
        )
        .contains("not decreasing"));
        assert!(
            err("[model]\nread = { percentiles = [{ p = 50, latency = \"2us\" }] }")
                .contains("p = 100")
        );
        assert!(err("[model]\n[drives.first]").contains("drive index"));
        assert!(err("units = 1").contains("model"), "no [model] table");
    }
}
