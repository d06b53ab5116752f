//! The wire format, byte for byte: every layout encoded from fixed values
//! must give exactly these bytes (recorded before the layouts became
//! declared structs, so a refactor cannot change the format unnoticed).

use vsic_abi::admin::{AdminCommand, AdminCompletion, Opcode, FLAG_READ_ONLY};
use vsic_abi::cap::{CapToken, Rights, SECRET_LEN};
use vsic_abi::records::{encode_stats, ExtentRun, Identify, QueueStats, SlotInfo, VsaInfo, VsicInfo, VsicStats};
use vsic_abi::virtio::DiscardSegment;
use vsic_abi::window::SLOTS_PER_VSIC;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn samples() -> Vec<(&'static str, Vec<u8>)> {
    let mut cmd = AdminCommand::new(Opcode::Attach);
    cmd.payload_len = 64;
    cmd.flags = FLAG_READ_ONLY;
    cmd.vsic = 0x0102_0304;
    cmd.slot = 0x0506_0708;
    cmd.args = [0x1111_2222_3333_4444, 0x5555_6666_7777_8888, 0x99aa_bbcc_ddee_ff00, 0x0123_4567_89ab_cdef];
    let comp = AdminCompletion { status: 0x0a0b, payload_len: 0x0c0d_0e0f, result0: 0x1020_3040_5060_7080, result1: 0x90a0_b0c0_d0e0_f001 };
    let mut secret = [0u8; SECRET_LEN];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = (i * 7 + 3) as u8;
    }
    let cap = CapToken { vsa_id: 0x0102_0304_0506_0708, token_id: 0x090a_0b0c, rights: Rights::READ.union(Rights::ADMIN), secret };
    let identify = Identify {
        abi_version: 1,
        vsics: 2,
        queues_per_vsic: 3,
        slots_per_vsic: 4,
        extent_size: 5,
        window_shift: 6,
        drives: 7,
        total_extents: 8,
        free_extents: 9,
        vsa_count: 10,
        cache_mode: 11,
        metadata_generation: 12,
    };
    let vsa = VsaInfo { vsa_id: 1, size: 2, extents: 3, stripe: 4, live_tokens: 5, attachments: 6, role: 0 };
    let mut slots = [SlotInfo::default(); SLOTS_PER_VSIC as usize];
    for (i, s) in slots.iter_mut().enumerate() {
        *s = SlotInfo { vsa_id: 100 + i as u64, token_id: 200 + i as u32, flags: (i % 2) as u32 };
    }
    let vsic = VsicInfo { vsic: 7, enabled: true, queues: 4, qos_bytes_per_sec: 0x1234, qos_iops: 0x5678, slots };
    let stats = VsicStats {
        vsic: 3,
        queue_count: 0,
        reads: 1,
        writes: 2,
        flushes: 3,
        discards: 4,
        write_zeroes: 5,
        bytes_read: 6,
        bytes_written: 7,
        errors: 8,
        protection_violations: 9,
        qos_delayed: 10,
    };
    let queues = vec![
        QueueStats { queue: 0, requests: 11, bytes_read: 12, bytes_written: 13, errors: 14 },
        QueueStats { queue: 1, requests: 15, bytes_read: 16, bytes_written: 17, errors: 18 },
    ];
    let run = ExtentRun { drive: 0x0102_0304, count: 0x0506_0708, first_extent: 0x1122_3344_5566_7788 };
    let seg = DiscardSegment { sector: 0x0102_0304_0506_0708, num_sectors: 0x0a0b_0c0d, flags: 1 };
    vec![
        ("admin command", cmd.encode().to_vec()),
        ("admin completion", comp.encode().to_vec()),
        ("capability", cap.encode().to_vec()),
        ("identify", identify.encode().to_vec()),
        ("vsa info", vsa.encode().to_vec()),
        ("vsic info", vsic.encode().to_vec()),
        ("stats", encode_stats(&[(stats, queues)])),
        ("extent run", run.encode().to_vec()),
        ("discard segment", seg.encode().to_vec()),
    ]
}

/// Recorded from the encoders of the byte-offset implementation.
const GOLDEN: &[(&str, &str)] = &[
        ("admin command", "5653494301003000400000000100000004030201080706054444333322221111888877776666555500ffeeddccbbaa99efcdab89674523010000000000000000"),
        ("admin completion", "0b0a00000f0e0d0c807060504030201001f0e0d0c0b0a0900000000000000000"),
        ("capability", "564341500100000008070605040302010c0b0a09050000000000000000000000030a11181f262d343b424950575e656c737a81888f969da4abb2b9c0c7ced5dc"),
        ("identify", "0100000002000000030000000400000005000000000000000600000007000000080000000000000009000000000000000a0000000b0000000c00000000000000"),
        ("vsa info", "010000000000000002000000000000000300000004000000050000000600000000000000000000000000000000000000"),
        ("vsic info", "07000000010000000400000000000000341200000000000078560000000000006400000000000000c8000000000000006500000000000000c9000000010000006600000000000000ca000000000000006700000000000000cb000000010000006800000000000000cc000000000000006900000000000000cd000000010000006a00000000000000ce000000000000006b00000000000000cf000000010000006c00000000000000d0000000000000006d00000000000000d1000000010000006e00000000000000d2000000000000006f00000000000000d3000000010000007000000000000000d4000000000000007100000000000000d5000000010000007200000000000000d6000000000000007300000000000000d700000001000000"),
        ("stats", "03000000020000000100000000000000020000000000000003000000000000000400000000000000050000000000000006000000000000000700000000000000080000000000000009000000000000000a0000000000000000000000000000000b000000000000000c000000000000000d000000000000000e0000000000000001000000000000000f00000000000000100000000000000011000000000000001200000000000000"),
        ("extent run", "04030201080706058877665544332211"),
        ("discard segment", "08070605040302010d0c0b0a01000000"),
];

#[test]
fn every_layout_encodes_to_the_recorded_bytes() {
    let samples = samples();
    assert_eq!(samples.len(), GOLDEN.len());
    for ((name, bytes), (gname, ghex)) in samples.iter().zip(GOLDEN) {
        assert_eq!(name, gname);
        assert_eq!(&hex(bytes), ghex, "{name}: wire bytes changed");
    }
}

#[test]
fn virtio_config_offsets_are_the_ones_the_device_always_used() {
    use vsic_abi::virtio::{config, REQ_HEADER_LEN, SERIAL_LEN};
    let offsets = [
        config::CAPACITY,
        config::SIZE_MAX,
        config::SEG_MAX,
        config::BLK_SIZE,
        config::NUM_QUEUES,
        config::MAX_DISCARD_SECTORS,
        config::MAX_DISCARD_SEG,
        config::DISCARD_SECTOR_ALIGNMENT,
        config::MAX_WRITE_ZEROES_SECTORS,
        config::MAX_WRITE_ZEROES_SEG,
        config::WRITE_ZEROES_MAY_UNMAP,
        config::LEN,
    ];
    assert_eq!(offsets, [0, 8, 12, 20, 34, 36, 40, 44, 48, 52, 56, 60]);
    assert_eq!((REQ_HEADER_LEN, SERIAL_LEN), (16, 20));
}
