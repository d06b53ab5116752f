//! Tests of the whole metadata format.

/// The on-drive bytes of format 1, recorded from the encoder before the
/// layouts were declared as structs: existing pools must keep opening.
mod golden {
    use std::sync::Arc;

    use vsic_abi::Rights;

    use crate::controller::drive::Drive;
    use crate::controller::metadata::body::encode_body;
    use crate::controller::metadata::layout::{SlotHeader, Superblock, SLOT_HEADER_LEN};
    use crate::controller::metadata::open_pool;
    use crate::controller::state::{
        Attachment, DriveRecord, PhysExtent, PoolState, TokenRecord, VsaRecord,
    };

    /// A one-drive pool of 230 extents of 4 KiB: the metadata area (two
    /// superblocks, two 256 KiB slots) takes the first 130.
    pub(super) fn sample_superblock() -> Superblock {
        Superblock {
            drive_index: 0,
            drive_count: 1,
            pool_id: *b"0123456789abcdef",
            extent_size: 4096,
            slot_len: 1 << 18,
            first_data_extent: 130,
            extent_count: 230,
        }
    }

    pub(super) fn sample_state() -> PoolState {
        let mut s = PoolState::new(
            4096,
            vec![DriveRecord {
                first_data_extent: 130,
                extent_count: 230,
            }],
            2,
        );
        s.vsas.insert(
            4,
            VsaRecord {
                id: 4,
                size: 3 * 4096,
                stripe: vec![0],
                extents: vec![
                    PhysExtent {
                        drive: 0,
                        index: 130,
                    },
                    PhysExtent {
                        drive: 0,
                        index: 131,
                    },
                    PhysExtent {
                        drive: 0,
                        index: 140,
                    },
                ],
                tokens: vec![
                    TokenRecord {
                        id: 1,
                        parent: 0,
                        rights: Rights::ALL,
                        revoked: true,
                        digest: [0xa1; 32],
                    },
                    TokenRecord {
                        id: 2,
                        parent: 1,
                        rights: Rights::READ,
                        revoked: false,
                        digest: [0xb2; 32],
                    },
                ],
                next_token_id: 3,
            },
        );
        s.next_vsa_id = 5;
        s.vsics[1].slots[15] = Some(Attachment {
            vsa_id: 4,
            token_id: 2,
            read_only: true,
        });
        s.vsics[1].slots[0] = Some(Attachment {
            vsa_id: 4,
            token_id: 1,
            read_only: false,
        });
        s.vsics[0].enabled = false;
        s.vsics[0].qos_iops = 77;
        s.vsics[0].qos_bytes_per_sec = 0x1122_3344;
        s.pending_zero = vec![
            PhysExtent {
                drive: 0,
                index: 150,
            },
            PhysExtent {
                drive: 0,
                index: 151,
            },
        ];
        s.store_vsa = 4;
        s
    }

    pub(super) const GENERATION: u64 = 7;

    pub(super) fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    /// Superblock of `sample_superblock()`.
    const SUPERBLOCK: &[&str] = &[
        "56534943504f4f4c01000000000000000100000000000000303132333435363738396162636465660010000000000000",
        "00000400000000008200000000000000e600000000000000000000000000000000000000000000000000000000000000",
        "3403eebc63d4d47977a46654b434bc2f6cf8b707ec9bdb8d44cc43bcd8a166cd",
    ];
    /// Body of `sample_state()`.
    const BODY: &[&str] = &[
        "00100000000000000500000000000000010000008200000000000000e600000000000000010000000400000000000000",
        "003000000000000003000000010000000000000002000000000000000200000082000000000000000000000001000000",
        "8c000000000000000200000001000000000000000700000001000000a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1a1",
        "a1a1a1a1a1a1a1a1a1a1a1a102000000010000000100000000000000b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2b2",
        "b2b2b2b2b2b2b2b2b2b2b2b2020000000000000044332211000000004d00000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000100000000000000000000000000000000000000040000000000000001000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "000000000000000000000000000000000000000000000000040000000000000002000000010000000100000000000000",
        "020000009600000000000000",
    ];
    /// Slot header of generation 7 holding `BODY` (store role: VSA 4).
    const SLOT_HEADER: &[&str] = &[
        "565349434d455441010000000000000007000000000000000c0300000000000030313233343536373839616263646566",
        "040000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000000",
        "b9548c57b1ece9f6841e59aff31483db25f27865ccace6bc9e8e899f75772e88",
    ];

    fn unhex(lines: &[&str]) -> Vec<u8> {
        let h: String = lines.concat();
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).unwrap())
            .collect()
    }

    // The encoders under test, behind one name each so that this test
    // stays the same when their signatures change.
    fn superblock_bytes(sb: &Superblock) -> Vec<u8> {
        sb.encode().to_vec()
    }
    fn slot_bytes(generation: u64, pool_id: &[u8; 16], store_vsa: u64, body: &[u8]) -> Vec<u8> {
        SlotHeader::encode(generation, pool_id, store_vsa, body)
    }

    #[test]
    fn encoding_matches_recorded_bytes() {
        let sb = sample_superblock();
        assert_eq!(
            hex(&superblock_bytes(&sb)),
            hex(&unhex(SUPERBLOCK)),
            "superblock"
        );
        let s = sample_state();
        let body = encode_body(&s);
        assert_eq!(hex(&body), hex(&unhex(BODY)), "body");
        let slot = slot_bytes(GENERATION, &sb.pool_id, s.store_vsa, &body);
        assert_eq!(
            hex(&slot[..SLOT_HEADER_LEN]),
            hex(&unhex(SLOT_HEADER)),
            "slot header"
        );
        assert_eq!(
            slot[SLOT_HEADER_LEN..],
            body[..],
            "the body follows the slot header"
        );
    }

    /// A drive written with the recorded bytes opens as the sample pool.
    #[test]
    fn recorded_pool_image_opens() {
        let dir = crate::controller::testutil::TempDir::new("golden");
        let sb = sample_superblock();
        let path = dir.path().join("d0");
        let drive = Arc::new(
            Drive::open(&path, Some(sb.extent_count * sb.extent_size), false).expect("create"),
        );
        let superblock = unhex(SUPERBLOCK);
        drive.write_all_at(&superblock, 0).unwrap();
        drive.write_all_at(&superblock, 4096).unwrap();
        let mut slot = unhex(SLOT_HEADER);
        slot.extend_from_slice(&unhex(BODY));
        drive.write_all_at(&slot, 8192).unwrap();
        let opened = open_pool(&[drive], 1 << 20, 2).unwrap_or_else(|e| panic!("{e}"));
        assert!(!opened.formatted);
        assert_eq!(opened.state, sample_state());
        assert_eq!(opened.store.generation(), GENERATION);
    }

    /// The recorded superblock, rewritten as format version 2 (with a
    /// valid checksum), makes open refuse the drive by name rather than
    /// treat it as foreign data.
    #[test]
    fn newer_format_version_is_refused() {
        use sha2::{Digest, Sha256};
        let dir = crate::controller::testutil::TempDir::new("golden-v2");
        let sb = sample_superblock();
        let path = dir.path().join("d0");
        let drive = Arc::new(
            Drive::open(&path, Some(sb.extent_count * sb.extent_size), false).expect("create"),
        );
        let mut superblock = unhex(SUPERBLOCK);
        superblock[8] = 2;
        let sum: [u8; 32] = Sha256::digest(&superblock[..96]).into();
        superblock[96..].copy_from_slice(&sum);
        drive.write_all_at(&superblock, 0).unwrap();
        let e = open_pool(&[drive], 1 << 20, 2).err().expect("refused");
        let shown = e.to_string();
        assert!(
            shown.contains("d0: pool format version 2 is not supported"),
            "{shown}"
        );
    }
}
