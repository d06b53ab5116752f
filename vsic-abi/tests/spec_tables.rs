//! The byte tables of `docs/device-spec.md` against the declared layouts:
//! every row's offset, field name and size must match the struct, and every
//! field must have its row.

use vsic_abi::admin::{AdminCommandWire, AdminCompletionWire};
use vsic_abi::cap::CapTokenWire;
use vsic_abi::layout::{Field, Layout};
use vsic_abi::records::{
    DmaWindowWire, ExtentRunWire, IdentifyWire, QueueStatsWire, SlotInfoWire, VsaInfoWire,
    VsicInfoWire, VsicStatsWire,
};

const SPEC: &str = include_str!("../../docs/device-spec.md");

/// The rows (offset, field name, size) of the first table after the heading
/// that starts with `heading`.
fn spec_table(heading: &str) -> Vec<(usize, String, usize)> {
    let mut lines = SPEC.lines().skip_while(|l| {
        !(l.starts_with('#') && l.trim_start_matches('#').trim().starts_with(heading))
    });
    assert!(
        lines.next().is_some(),
        "docs/device-spec.md has no heading '{heading}'"
    );
    let table: Vec<&str> = lines
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2) // header and separator
        .collect();
    assert!(!table.is_empty(), "no table under '{heading}'");
    table
        .iter()
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            let offset = cells[0]
                .parse()
                .unwrap_or_else(|_| panic!("'{heading}': bad offset in {row}"));
            let name = cells[1]
                .split([' ', '('])
                .next()
                .unwrap_or_default()
                .to_string();
            (
                offset,
                name,
                type_size(cells[2]).unwrap_or_else(|| panic!("'{heading}': bad type in {row}")),
            )
        })
        .collect()
}

fn type_size(t: &str) -> Option<usize> {
    match t {
        "u8" => Some(1),
        "u16" => Some(2),
        "u32" => Some(4),
        "u64" => Some(8),
        _ => t.strip_suffix(" B")?.parse().ok(),
    }
}

/// A struct field's name as the spec writes it (`reserved_2` is `reserved`).
fn spec_name(f: &Field) -> &str {
    match f.name.rsplit_once('_') {
        Some((base, n)) if n.chars().all(|c| c.is_ascii_digit()) => base,
        _ => f.name,
    }
}

fn check<L: Layout>(heading: &str) {
    let rows = spec_table(heading);
    let fields: Vec<(usize, String, usize)> = L::FIELDS
        .iter()
        .map(|f| (f.offset, spec_name(f).to_string(), f.size))
        .collect();
    assert_eq!(
        rows, fields,
        "docs/device-spec.md '{heading}' and the declared layout differ"
    );
    let covered: usize = L::FIELDS.iter().map(|f| f.size).sum();
    assert_eq!(covered, L::LEN, "{heading}: fields do not cover the layout");
    assert!(
        heading.contains(&format!("({} bytes)", L::LEN)),
        "{heading}: size in the heading"
    );
}

#[test]
fn admin_command_and_completion() {
    check::<AdminCommandWire>("Admin command (64 bytes)");
    check::<AdminCompletionWire>("Admin completion (32 bytes)");
}

#[test]
fn capability_token() {
    check::<CapTokenWire>("Token wire form (64 bytes)");
}

#[test]
fn records() {
    check::<IdentifyWire>("Identify (64 bytes)");
    check::<VsaInfoWire>("VsaInfo (48 bytes)");
    check::<VsicInfoWire>("VsicInfo (288 bytes)");
    check::<SlotInfoWire>("SlotInfo (16 bytes)");
    check::<DmaWindowWire>("DmaWindow (24 bytes)");
    check::<VsicStatsWire>("VsicStats (88 bytes)");
    check::<QueueStatsWire>("QueueStats (40 bytes)");
    check::<ExtentRunWire>("ExtentRun (16 bytes)");
}

#[test]
fn a_wrong_table_is_caught() {
    // The checker itself must be able to fail: a layout against another's table.
    let r = std::panic::catch_unwind(|| check::<ExtentRunWire>("SlotInfo (16 bytes)"));
    assert!(r.is_err());
}

/// The (code, name) rows of the first table under `heading`.
fn spec_codes(heading: &str) -> Vec<(u16, String)> {
    let mut lines = SPEC.lines().skip_while(|l| {
        !(l.starts_with('#') && l.trim_start_matches('#').trim().starts_with(heading))
    });
    assert!(
        lines.next().is_some(),
        "docs/device-spec.md has no heading '{heading}'"
    );
    lines
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .map(|row| {
            let cells: Vec<&str> = row.trim_matches('|').split('|').map(str::trim).collect();
            let code = match cells[0].strip_prefix("0x") {
                Some(hex) => u16::from_str_radix(hex, 16),
                None => cells[0].parse(),
            }
            .unwrap_or_else(|_| panic!("'{heading}': bad code in {row}"));
            (code, cells[1].to_string())
        })
        .collect()
}

/// `VsaDeleteById` as the spec writes it: `VSA_DELETE_BY_ID`.
fn screaming_snake(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

#[test]
fn opcode_and_status_tables_list_every_code() {
    use vsic_abi::{AdminStatus, Opcode};
    let opcodes: Vec<(u16, String)> = Opcode::ALL
        .iter()
        .map(|o| (*o as u16, screaming_snake(&format!("{o:?}"))))
        .collect();
    assert_eq!(
        spec_codes("Opcodes"),
        opcodes,
        "docs/device-spec.md opcode table"
    );
    let statuses: Vec<(u16, String)> = AdminStatus::ALL
        .iter()
        .map(|s| (*s as u16, s.name().to_string()))
        .collect();
    assert_eq!(
        spec_codes("Status codes"),
        statuses,
        "docs/device-spec.md status table"
    );
}
