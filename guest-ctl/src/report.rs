//! Turning device records into output: a human text and a JSON value for
//! each. Nothing here talks to the device.

use serde_json::{json, Value};
use vsic::admin::StatsEntry;
use vsic_abi::records::{role_name, CacheMode, ExtentRun, Identify, SlotInfo, VsaInfo, VsicInfo};
use vsic_abi::units::format_size;
use vsic_abi::window;
use vsic_abi::CapToken;

use crate::table::{key_values, Table};

/// What a command prints: `human` by default, `json` with `--json`.
pub struct Report {
    pub human: String,
    pub json: Value,
}

impl Report {
    pub fn new(human: impl Into<String>, json: Value) -> Report {
        Report {
            human: human.into(),
            json,
        }
    }
}

/// The public part of a capability (never the secret).
pub fn token_json(token: &CapToken) -> Value {
    json!({ "vsa": token.vsa_id, "token": token.token_id, "rights": token.rights.to_string() })
}

pub fn token_human(token: &CapToken) -> String {
    key_values(&[
        ("vsa", token.vsa_id.to_string()),
        ("token", token.token_id.to_string()),
        ("rights", rights_words(token)),
    ])
}

fn rights_words(token: &CapToken) -> String {
    let r = token.rights;
    let mut words = Vec::new();
    for (right, word) in [
        (vsic_abi::Rights::READ, "read"),
        (vsic_abi::Rights::WRITE, "write"),
        (vsic_abi::Rights::ADMIN, "admin"),
    ] {
        if r.contains(right) {
            words.push(word);
        }
    }
    let words = if words.is_empty() {
        "none".to_string()
    } else {
        words.join(", ")
    };
    format!("{r} ({words})")
}

pub fn identify(id: &Identify) -> Report {
    let cache = CacheMode::from_u32(id.cache_mode)
        .map(CacheMode::name)
        .unwrap_or("unknown");
    let window = 1u64.checked_shl(id.window_shift).unwrap_or(0);
    let human = key_values(&[
        ("abi version", id.abi_version.to_string()),
        ("VSICs", id.vsics.to_string()),
        ("queues per VSIC", id.queues_per_vsic.to_string()),
        ("slots per VSIC", id.slots_per_vsic.to_string()),
        ("window size", format_size(window)),
        ("extent size", format_size(id.extent_size)),
        ("drives", id.drives.to_string()),
        (
            "extents",
            format!("{} total, {} free", id.total_extents, id.free_extents),
        ),
        (
            "capacity",
            format!(
                "{} total, {} free",
                format_size(id.total_extents.saturating_mul(id.extent_size)),
                format_size(id.free_extents.saturating_mul(id.extent_size))
            ),
        ),
        ("VSAs", id.vsa_count.to_string()),
        ("cache mode", cache.to_string()),
        ("metadata generation", id.metadata_generation.to_string()),
    ]);
    let json = json!({
        "abi_version": id.abi_version,
        "vsics": id.vsics,
        "queues_per_vsic": id.queues_per_vsic,
        "slots_per_vsic": id.slots_per_vsic,
        "window_shift": id.window_shift,
        "extent_size": id.extent_size,
        "drives": id.drives,
        "total_extents": id.total_extents,
        "free_extents": id.free_extents,
        "vsa_count": id.vsa_count,
        "cache_mode": cache,
        "metadata_generation": id.metadata_generation,
    });
    Report::new(human, json)
}

fn attached_slots(info: &VsicInfo) -> impl Iterator<Item = (usize, &SlotInfo)> {
    info.slots
        .iter()
        .enumerate()
        .filter(|(_, s)| s.is_attached())
}

pub fn list(vsas: &[VsaInfo], vsics: &[VsicInfo]) -> Report {
    let mut vsa_table = Table::new(&[
        "VSA", "SIZE", "EXTENTS", "STRIPE", "TOKENS", "ATTACHED", "ROLE",
    ]);
    for v in vsas {
        let tokens = if is_orphan(v) {
            "0 (orphan)".to_string()
        } else {
            v.live_tokens.to_string()
        };
        vsa_table.row(vec![
            v.vsa_id.to_string(),
            format_size(v.size),
            v.extents.to_string(),
            v.stripe.to_string(),
            tokens,
            v.attachments.to_string(),
            role_text(v.role),
        ]);
    }
    let mut vsic_table = Table::new(&[
        "VSIC",
        "STATE",
        "QUEUES",
        "QOS-BYTES/S",
        "QOS-IOPS",
        "ATTACHMENTS",
    ]);
    for v in vsics {
        let attachments: Vec<String> = attached_slots(v)
            .map(|(slot, s)| {
                let mode = if s.read_only() { "ro" } else { "rw" };
                format!("slot{slot}=vsa{}({mode},token{})", s.vsa_id, s.token_id)
            })
            .collect();
        vsic_table.row(vec![
            v.vsic.to_string(),
            if v.enabled { "enabled" } else { "disabled" }.to_string(),
            v.queues.to_string(),
            limit_text(v.qos_bytes_per_sec, format_size),
            limit_text(v.qos_iops, |n| n.to_string()),
            if attachments.is_empty() {
                "-".to_string()
            } else {
                attachments.join(" ")
            },
        ]);
    }
    let mut human = String::new();
    if vsa_table.is_empty() {
        human.push_str("no VSAs\n");
    } else {
        human.push_str(&vsa_table.render());
    }
    human.push('\n');
    human.push_str(&vsic_table.render());
    let json = json!({
        "vsas": vsas.iter().map(vsa_json).collect::<Vec<_>>(),
        "vsics": vsics.iter().map(vsic_json).collect::<Vec<_>>(),
    });
    Report::new(human, json)
}

fn limit_text(value: u64, show: impl Fn(u64) -> String) -> String {
    if value == 0 {
        "unlimited".to_string()
    } else {
        show(value)
    }
}

/// A VSA no live token grants anything on: only the PF owner can still
/// resize or delete it (`vsa resize --id`, `vsa delete --id`).
fn is_orphan(v: &VsaInfo) -> bool {
    v.live_tokens == 0
}

fn role_text(role: u32) -> String {
    role_name(role).map_or_else(|| format!("unknown-{role}"), str::to_string)
}

fn vsa_json(v: &VsaInfo) -> Value {
    json!({
        "vsa": v.vsa_id,
        "size": v.size,
        "extents": v.extents,
        "stripe": v.stripe,
        "live_tokens": v.live_tokens,
        "orphan": is_orphan(v),
        "attachments": v.attachments,
        "role": role_text(v.role),
    })
}

pub fn vsic_json(v: &VsicInfo) -> Value {
    let slots: Vec<Value> = attached_slots(v)
        .map(|(slot, s)| {
            json!({
                "slot": slot,
                "vsa": s.vsa_id,
                "token": s.token_id,
                "read_only": s.read_only(),
                "window_offset": window::slot_base(slot as u32),
            })
        })
        .collect();
    json!({
        "vsic": v.vsic,
        "enabled": v.enabled,
        "queues": v.queues,
        "qos": { "bytes_per_sec": v.qos_bytes_per_sec, "iops": v.qos_iops },
        "attachments": slots,
    })
}

pub fn stats(entries: &[StatsEntry]) -> Report {
    let mut vsics = Table::new(&[
        "VSIC",
        "READS",
        "WRITES",
        "FLUSHES",
        "DISCARDS",
        "WZEROES",
        "READ",
        "WRITTEN",
        "ERRORS",
        "VIOLATIONS",
        "QOS-DELAYED",
    ]);
    let mut queues = Table::new(&["VSIC", "QUEUE", "REQUESTS", "READ", "WRITTEN", "ERRORS"]);
    let mut json_entries = Vec::new();
    for (v, qs) in entries {
        vsics.row(vec![
            v.vsic.to_string(),
            v.reads.to_string(),
            v.writes.to_string(),
            v.flushes.to_string(),
            v.discards.to_string(),
            v.write_zeroes.to_string(),
            v.bytes_read.to_string(),
            v.bytes_written.to_string(),
            v.errors.to_string(),
            v.protection_violations.to_string(),
            v.qos_delayed.to_string(),
        ]);
        for q in qs {
            queues.row(vec![
                v.vsic.to_string(),
                q.queue.to_string(),
                q.requests.to_string(),
                q.bytes_read.to_string(),
                q.bytes_written.to_string(),
                q.errors.to_string(),
            ]);
        }
        json_entries.push(v.to_json(qs));
    }
    let mut human = vsics.render();
    if !queues.is_empty() {
        human.push('\n');
        human.push_str(&queues.render());
    }
    Report::new(human, json!({ "vsics": json_entries }))
}

/// The extent map, with each run's logical position in the VSA.
pub fn extent_map(vsa_id: u64, extent_size: u64, runs: &[ExtentRun]) -> Report {
    let mut table = Table::new(&[
        "LOGICAL-OFFSET",
        "DRIVE",
        "FIRST-EXTENT",
        "EXTENTS",
        "BYTES",
    ]);
    let mut json_runs = Vec::new();
    let mut logical_extent: u64 = 0;
    for r in runs {
        let offset = logical_extent.saturating_mul(extent_size);
        let bytes = (r.count as u64).saturating_mul(extent_size);
        table.row(vec![
            offset.to_string(),
            r.drive.to_string(),
            r.first_extent.to_string(),
            r.count.to_string(),
            format_size(bytes),
        ]);
        json_runs.push(json!({
            "logical_offset": offset,
            "drive": r.drive,
            "first_extent": r.first_extent,
            "extents": r.count,
        }));
        logical_extent = logical_extent.saturating_add(r.count as u64);
    }
    let total = logical_extent.saturating_mul(extent_size);
    let human = format!(
        "VSA {vsa_id}: {} in {logical_extent} extents of {}\n{}",
        format_size(total),
        format_size(extent_size),
        table.render()
    );
    let json = json!({ "vsa": vsa_id, "extent_size": extent_size, "runs": json_runs });
    Report::new(human, json)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vsic_abi::records::{QueueStats, VsicStats};
    use vsic_abi::window::SLOTS_PER_VSIC;
    use vsic_abi::Rights;

    #[test]
    fn list_shows_attachments_and_json_matches() {
        let vsas = [
            VsaInfo {
                vsa_id: 3,
                size: 8 << 20,
                extents: 8,
                stripe: 1,
                live_tokens: 2,
                attachments: 1,
                role: vsic_abi::records::ROLE_STORE,
            },
            VsaInfo {
                vsa_id: 4,
                size: 1 << 20,
                extents: 1,
                stripe: 1,
                live_tokens: 0,
                attachments: 0,
                role: 9,
            },
        ];
        let mut slots = [SlotInfo::default(); SLOTS_PER_VSIC as usize];
        slots[2] = SlotInfo {
            vsa_id: 3,
            token_id: 5,
            flags: SlotInfo::FLAG_READ_ONLY,
        };
        let vsics = [VsicInfo {
            vsic: 0,
            enabled: true,
            queues: 2,
            qos_bytes_per_sec: 0,
            qos_iops: 100,
            slots,
        }];
        let r = list(&vsas, &vsics);
        assert!(r.human.contains("slot2=vsa3(ro,token5)"), "{}", r.human);
        assert!(r.human.contains("8M"));
        assert!(r.human.contains("unlimited"));
        assert_eq!(r.json["vsas"][0]["size"], 8 << 20);
        assert_eq!(r.json["vsas"][0]["role"], "store");
        assert_eq!(r.json["vsas"][0]["orphan"], false);
        assert_eq!(r.json["vsas"][1]["role"], "unknown-9");
        assert_eq!(r.json["vsas"][1]["orphan"], true);
        assert!(
            r.human.contains("ROLE") && r.human.contains("store"),
            "{}",
            r.human
        );
        assert!(r.human.contains("0 (orphan)"), "{}", r.human);
        let att = &r.json["vsics"][0]["attachments"][0];
        assert_eq!(att["slot"], 2);
        assert_eq!(att["read_only"], true);
        assert_eq!(att["window_offset"], 2u64 << 40);
        assert_eq!(r.json["vsics"][0]["qos"]["iops"], 100);
    }

    #[test]
    fn extent_map_accumulates_logical_offsets() {
        let runs = [
            ExtentRun {
                drive: 0,
                count: 2,
                first_extent: 10,
            },
            ExtentRun {
                drive: 1,
                count: 3,
                first_extent: 4,
            },
        ];
        let r = extent_map(9, 1 << 20, &runs);
        assert_eq!(r.json["runs"][1]["logical_offset"], 2u64 << 20);
        assert!(
            r.human.starts_with("VSA 9: 5M in 5 extents of 1M"),
            "{}",
            r.human
        );
    }

    #[test]
    fn stats_lists_queues() {
        let v = VsicStats {
            vsic: 1,
            queue_count: 1,
            reads: 4,
            ..Default::default()
        };
        let q = QueueStats {
            queue: 0,
            requests: 4,
            ..Default::default()
        };
        let r = stats(&[(v, vec![q])]);
        assert_eq!(r.json["vsics"][0]["reads"], 4);
        assert_eq!(r.json["vsics"][0]["queues"][0]["requests"], 4);
        assert!(r.human.contains("QUEUE"));
    }

    #[test]
    fn tokens_never_show_their_secret() {
        let t = CapToken {
            vsa_id: 1,
            token_id: 2,
            rights: Rights::READ,
            secret: [0xab; 32],
        };
        assert!(!token_human(&t).contains("abab"));
        assert!(!token_json(&t).to_string().contains("abab"));
        assert!(token_human(&t).contains("r-- (read)"));
    }
}
